"""Blocks: each survives a block-document round trip (secrets included) and builds its object."""

from __future__ import annotations

from pathlib import Path

from blocks import CacheSettings, ClearMLCredentials, S3Credentials, SharedTierBlock
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


def test_s3_shared_tier_with_secret_credentials() -> None:
    creds = S3Credentials(
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="s3cr3t-value",
        region_name="eu-west-1",
        endpoint_url="http://127.0.0.1:9",
    )
    assert "s3cr3t-value" not in repr(creds) and "s3cr3t-value" not in creds.model_dump_json()
    block = roundtrip(SharedTierBlock(location="s3://bucket/prefix", s3_credentials=creds))
    tier = block.build()
    assert isinstance(tier, S3SharedTier) and (tier.bucket, tier.prefix) == ("bucket", "prefix/")
    frozen = tier.client._request_signer._credentials.get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key) == ("AKIDEXAMPLE", "s3cr3t-value")
    assert tier.client.meta.endpoint_url == "http://127.0.0.1:9"
    assert tier.client.meta.region_name == "eu-west-1"


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
