"""Blocks: each survives a block-document round trip (secrets included) and builds its object."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket

from blocks import CacheSettings, ClearMLCredentials, SharedTierBlock
from mlstage.cache import LocalCache
from mlstage.shared import FolderSharedTier, S3SharedTier
from mlstage.sources.clearml_server import ClearMLServer


def roundtrip(block):  # what the server stores (secrets revealed) back into a block
    data = block.model_dump(mode="json", context={"include_secrets": True})
    return type(block).model_validate(data)


def test_folder_shared_tier(tmp_path: Path) -> None:
    block = roundtrip(SharedTierBlock(location=str(tmp_path / "shared")))
    tier = block.build()
    assert isinstance(tier, FolderSharedTier) and tier.root == tmp_path / "shared"


def test_s3_shared_tier_with_prefect_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "token-of-the-environment")  # never mixed in
    creds = AwsCredentials(
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="s3cr3t-value",
        region_name="eu-west-1",
        aws_client_parameters={"endpoint_url": "http://127.0.0.1:9"},
    )
    block = roundtrip(SharedTierBlock(location="s3://bucket/prefix", s3_credentials=creds))
    tier = block.build()
    assert isinstance(tier, S3SharedTier) and (tier.bucket, tier.prefix) == ("bucket", "prefix/")
    config = tier.store.config
    assert (config.endpoint, config.region) == ("http://127.0.0.1:9", "eu-west-1")
    assert "s3cr3t-value" not in repr(config) and "s3cr3t-value" not in repr(tier.store)
    signed_with = config._provider()()  # what obstore is handed
    assert (signed_with["access_key_id"], signed_with["secret_access_key"]) == (
        "AKIDEXAMPLE",
        "s3cr3t-value",
    )
    assert signed_with["token"] is None


def test_s3_bucket_block_names_bucket_folder_and_credentials() -> None:
    bucket = S3Bucket(
        bucket_name="team",
        bucket_folder="mlstage/shared",
        credentials=MinIOCredentials(
            minio_root_user="minio",
            minio_root_password="minio-secret",
            aws_client_parameters={"endpoint_url": "http://minio.lan:9000"},
        ),
    )
    tier = roundtrip(SharedTierBlock(s3_bucket=bucket)).build()
    assert isinstance(tier, S3SharedTier) and tier.uri == "s3://team/mlstage/shared/"
    assert tier.store.config.endpoint == "http://minio.lan:9000"
    assert tier.store.config._provider()()["secret_access_key"] == "minio-secret"


def test_a_shared_tier_block_names_one_place() -> None:
    with pytest.raises(ValueError, match="either location or s3_bucket"):
        SharedTierBlock()
    with pytest.raises(ValueError, match="either location or s3_bucket"):
        SharedTierBlock(location="/x", s3_bucket=S3Bucket(bucket_name="b"))


def test_cache_settings(tmp_path: Path) -> None:
    block = roundtrip(CacheSettings(cache_dir=str(tmp_path / "c"), limit_bytes=1234, workers=4))
    cache = block.build()
    assert isinstance(cache, LocalCache)
    assert cache.stats().limit_bytes == 1234 and block.workers == 4


def test_clearml_credentials() -> None:
    block = roundtrip(
        ClearMLCredentials(api_host="http://api:8008", access_key="AK", secret_key="very-secret")
    )
    assert "very-secret" not in repr(block)
    server = block.build()
    assert server == ClearMLServer(
        api_host="http://api:8008", access_key="AK", secret_key="very-secret"
    )
    assert "very-secret" not in repr(server)
