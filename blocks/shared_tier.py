"""The shared tier (a folder, or S3 with prefect-aws credentials) as a Prefect block.

S3 credentials and buckets are prefect-aws's own blocks (``AwsCredentials``,
``MinIOCredentials``, ``S3Bucket``): a team that already keeps them in Prefect uses them as
they are. ``store_config`` turns one into mlstage's ``StoreConfig`` (secrets stay
``SecretStr``); mlstage itself never imports Prefect.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefect.blocks.core import Block
from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket
from pydantic import Field, SecretStr, model_validator

from mlstage.errors import ConfigError
from mlstage.shared import SharedTier, open_shared
from mlstage.store import StoreConfig


def store_config(credentials: AwsCredentials | MinIOCredentials | None) -> StoreConfig:
    """The ``StoreConfig`` a prefect-aws credentials block describes.

    What the block leaves empty comes from the standard AWS environment, as boto3 would take
    it (endpoint, region, CA bundle, proxy, and credentials when the block has none). Keys
    are used as they are; a profile, or a role to assume, go through boto3 (the role's
    temporary credentials are renewed before they expire).
    """
    config = StoreConfig.from_env()
    if credentials is None:
        return config
    params = credentials.aws_client_parameters
    changes: dict[str, Any] = {}
    if credentials.region_name:
        changes["region"] = credentials.region_name
    if params.endpoint_url:
        changes["endpoint"] = params.endpoint_url
    if params.verify is False:
        changes["allow_invalid_certificates"] = True
    if params.verify_cert_path:
        changes["ca_bundle"] = str(params.verify_cert_path)
    style = ((params.config or {}).get("s3") or {}).get("addressing_style")
    if style in ("virtual", "path"):
        changes["virtual_hosted"] = style == "virtual"
    if isinstance(credentials, MinIOCredentials):
        return replace(
            config,
            **changes,
            **_keys(credentials.minio_root_user, credentials.minio_root_password, None),
        )
    key, secret = credentials.aws_access_key_id, credentials.aws_secret_access_key
    token = SecretStr(credentials.aws_session_token) if credentials.aws_session_token else None
    if credentials.assume_role_arn:
        from obstore.auth.boto3 import StsCredentialProvider

        base = credentials.model_copy(update={"assume_role_arn": None})
        role = {"RoleArn": credentials.assume_role_arn, "RoleSessionName": "mlstage"}
        role.update(credentials.assume_role_kwargs.get_params_override())
        provider = StsCredentialProvider(base.get_boto3_session(), **role)  # type: ignore[arg-type]
        return replace(config, **changes, credential_provider=provider)
    if credentials.profile_name and not (key and secret):
        return replace(
            config, **changes, profile=credentials.profile_name, **_keys(None, None, None)
        )
    if key and secret:
        return replace(config, **changes, **_keys(key, secret, token))
    return replace(config, **changes)


def _keys(key: str | None, secret: SecretStr | None, token: SecretStr | None) -> dict[str, Any]:
    """The credential fields of a StoreConfig, replacing whatever the environment gave."""
    return {
        "access_key_id": key,
        "secret_access_key": secret,
        "session_token": token,
        "credential_provider": None,
        "profile": None,
        "anonymous": False,
    }


class SharedTierBlock(Block):
    """Where preprocessed artifacts live for every node: a mounted folder or an S3 prefix."""

    _block_type_name = "mlstage shared tier"
    _block_type_slug = "mlstage-shared-tier"
    _description = (
        "mlstage's shared tier: a folder every node mounts (NFS, PVC), s3://bucket/prefix with "
        "prefect-aws AwsCredentials, or a prefect-aws S3Bucket."
    )

    location: str | None = Field(
        default=None,
        description="A folder path (NFS/PVC mount) or s3://bucket/prefix; empty when s3_bucket "
        "names the place.",
    )
    s3_credentials: AwsCredentials | None = Field(
        default=None,
        description="prefect-aws AwsCredentials for an s3:// location (keys, profile, role, "
        "region, endpoint); empty: the AWS environment of the process.",
    )
    s3_bucket: S3Bucket | None = Field(
        default=None,
        description="A prefect-aws S3Bucket (bucket, folder and credentials) instead of a "
        "location and credentials.",
    )

    @model_validator(mode="after")
    def _one_place(self) -> SharedTierBlock:
        if (self.location is None) == (self.s3_bucket is None):
            raise ValueError("give either location or s3_bucket")
        if self.s3_bucket is not None and self.s3_credentials is not None:
            raise ValueError("s3_bucket carries its own credentials: leave s3_credentials empty")
        return self

    def build(self) -> SharedTier:
        """The SharedTier this block configures."""
        if self.s3_bucket is not None:
            bucket = self.s3_bucket
            folder = bucket.bucket_folder.strip("/")
            location = f"s3://{bucket.bucket_name}/{folder}"
            return open_shared(location, config=store_config(bucket.credentials))
        assert self.location is not None
        if self.s3_credentials is not None and not self.location.startswith("s3://"):
            raise ConfigError(
                f"{self.location}: s3_credentials given for a location that is not s3://",
                hint="remove s3_credentials, or point location at s3://bucket/prefix",
            )
        config = store_config(self.s3_credentials) if self.location.startswith("s3://") else None
        return open_shared(self.location, config=config)
