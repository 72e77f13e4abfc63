"""ClearML credentials as a Prefect block; builds the environment the ClearML SDK reads."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


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

    def build(self) -> dict[str, str]:
        """CLEARML_* variables the ClearML SDK reads; apply with ``os.environ.update``.

        The SDK configures itself from the environment, so this is its whole configuration;
        the returned dict holds the secret: never log it.
        """
        env = {
            "CLEARML_API_HOST": self.api_host,
            "CLEARML_API_ACCESS_KEY": self.access_key,
            "CLEARML_API_SECRET_KEY": self.secret_key.get_secret_value(),
        }
        if self.web_host:
            env["CLEARML_WEB_HOST"] = self.web_host
        if self.files_host:
            env["CLEARML_FILES_HOST"] = self.files_host
        return env
