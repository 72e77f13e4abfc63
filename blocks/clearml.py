"""ClearML credentials as a Prefect block; builds the ClearMLServer the SDK is configured with."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from mlstage.sources.clearml_server import ClearMLServer


class ClearMLCredentials(Block):
    """ClearML server and API keys, for clearml:// dataset sources."""

    _block_type_name = "mlstage ClearML credentials"
    _block_type_slug = "mlstage-clearml-credentials"
    _description = "ClearML API server and keys (secret masked in the UI) for clearml:// sources."

    api_host: str = Field(description="ClearML API server, e.g. https://api.clear.ml.")
    web_host: str | None = Field(default=None, description="ClearML web server.")
    files_host: str | None = Field(default=None, description="ClearML file server.")
    access_key: str = Field(description="API access key.")
    secret_key: SecretStr = Field(description="API secret key.")

    def build(self) -> ClearMLServer:
        """The ClearMLServer to configure the ClearML SDK with, in-process (``configured()``):
        never through ``os.environ``, where model subprocesses would inherit the keys."""
        return ClearMLServer(
            api_host=self.api_host,
            access_key=self.access_key,
            secret_key=self.secret_key.get_secret_value(),
            web_host=self.web_host,
            files_host=self.files_host,
        )
