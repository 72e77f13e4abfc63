"""The shared tier (a folder, or S3 with its credentials) as Prefect blocks."""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from mlstage.shared import SharedTier, open_shared


class S3Credentials(Block):
    """Credentials and endpoint for S3 or an S3-compatible store; hands out ready boto3 clients."""

    _block_type_name = "mlstage S3 credentials"
    _block_type_slug = "mlstage-s3-credentials"
    _description = "S3 credentials for mlstage's shared tier (secrets masked in the UI)."

    aws_access_key_id: str | None = Field(
        default=None,
        description="Access key id; empty: boto3's default chain (env, profile, role).",
    )
    aws_secret_access_key: SecretStr | None = Field(default=None, description="Secret access key.")
    aws_session_token: SecretStr | None = Field(
        default=None, description="Session token for temporary credentials."
    )
    region_name: str | None = Field(default=None, description="AWS region, e.g. us-east-1.")
    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint, e.g. http://minio:9000; empty: AWS."
    )

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for a boto3 S3 client (secrets revealed only here)."""
        kw: dict[str, Any] = {
            "aws_access_key_id": self.aws_access_key_id,
            "aws_secret_access_key": (
                self.aws_secret_access_key.get_secret_value()
                if self.aws_secret_access_key
                else None
            ),
            "aws_session_token": (
                self.aws_session_token.get_secret_value() if self.aws_session_token else None
            ),
            "region_name": self.region_name,
            "endpoint_url": self.endpoint_url,
        }
        return {k: v for k, v in kw.items() if v}

    def build(self) -> Any:
        """A thread-safe boto3 S3 client configured for mlstage's concurrent transfers."""
        from mlstage.sources.s3 import make_client

        return make_client(**self.client_kwargs())


class SharedTierBlock(Block):
    """Where preprocessed artifacts live for every node: a mounted folder or s3://bucket/prefix."""

    _block_type_name = "mlstage shared tier"
    _block_type_slug = "mlstage-shared-tier"
    _description = (
        "mlstage's shared tier: a folder every node mounts (NFS, PVC) or s3://bucket/prefix."
    )

    location: str = Field(description="A folder path (NFS/PVC mount) or s3://bucket/prefix.")
    s3_credentials: S3Credentials | None = Field(
        default=None, description="Credentials for an s3:// location; empty: the AWS environment."
    )

    def build(self) -> SharedTier:
        """The SharedTier this block configures."""
        client = self.s3_credentials.build() if self.s3_credentials else None
        return open_shared(self.location, client=client)
