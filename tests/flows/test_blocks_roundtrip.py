"""Every block saved to a real Prefect server and loaded back (secrets included) still builds."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.prefect, pytest.mark.integration]


def test_blocks_round_trip_through_the_server(prefect_api, tmp_path: Path) -> None:
    from prefect_aws import AwsCredentials

    from blocks import CacheSettings, ClearMLCredentials, SharedTierBlock
    from mlstage.cache import LocalCache
    from mlstage.shared import FolderSharedTier, S3SharedTier

    creds = AwsCredentials(
        aws_access_key_id="AKID",
        aws_secret_access_key="rt-secret",
        aws_client_parameters={"endpoint_url": "http://x:1"},
    )
    SharedTierBlock(location=str(tmp_path / "shared")).save("rt-folder", overwrite=True)
    SharedTierBlock(location="s3://bkt/pre", s3_credentials=creds).save("rt-s3", overwrite=True)
    CacheSettings(cache_dir=str(tmp_path / "cache"), limit_bytes=10).save(
        "rt-cache", overwrite=True
    )
    ClearMLCredentials(api_host="http://api", access_key="AK", secret_key="cm-secret").save(
        "rt-clearml", overwrite=True
    )

    assert isinstance(SharedTierBlock.load("rt-folder").build(), FolderSharedTier)
    s3 = SharedTierBlock.load("rt-s3").build()
    assert isinstance(s3, S3SharedTier) and s3.store.config.endpoint == "http://x:1"
    assert s3.store.config._provider()()["secret_access_key"] == "rt-secret"
    cache = CacheSettings.load("rt-cache").build()
    assert isinstance(cache, LocalCache) and cache.stats().limit_bytes == 10
    assert ClearMLCredentials.load("rt-clearml").build().secret_key == "cm-secret"


def test_a_shared_tier_block_with_aws_credentials_publishes_to_s3(
    prefect_api, tmp_path: Path, s3_endpoint, monkeypatch
) -> None:
    """Credentials that exist only in the blocks (none in the environment) reach S3."""
    import uuid

    from prefect_aws import AwsCredentials

    from blocks import SharedTierBlock
    from mlstage.testing.s3 import CREDENTIALS

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    bucket = f"mlstage-blocks-{uuid.uuid4().hex[:8]}"
    s3_endpoint.client().create_bucket(Bucket=bucket)
    AwsCredentials(
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
        aws_client_parameters={"endpoint_url": s3_endpoint.url},
    ).save("rt-aws", overwrite=True)
    SharedTierBlock(
        location=f"s3://{bucket}/shared", s3_credentials=AwsCredentials.load("rt-aws")
    ).save("rt-s3-moto", overwrite=True)

    tier = SharedTierBlock.load("rt-s3-moto").build()
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.bin").write_bytes(b"x" * 100)
    published = tier.publish("ab" * 16, data, {"dataset": "d"})
    assert [e.path for e in published.manifest.entries] == ["x.bin"]
    assert tier.get("ab" * 16) == published
