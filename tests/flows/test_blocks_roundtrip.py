"""Every block saved to a real Prefect server and loaded back (secrets included) still builds."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.prefect, pytest.mark.integration]


def test_blocks_round_trip_through_the_server(prefect_api, tmp_path: Path) -> None:
    from blocks import CacheSettings, ClearMLCredentials, S3Credentials, SharedTierBlock
    from mlstage.cache import LocalCache
    from mlstage.shared import FolderSharedTier, S3SharedTier

    creds = S3Credentials(
        aws_access_key_id="AKID", aws_secret_access_key="rt-secret", endpoint_url="http://x:1"
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
    assert isinstance(s3, S3SharedTier) and s3.client.meta.endpoint_url == "http://x:1"
    frozen = s3.client._request_signer._credentials.get_frozen_credentials()
    assert frozen.secret_key == "rt-secret"
    cache = CacheSettings.load("rt-cache").build()
    assert isinstance(cache, LocalCache) and cache.stats().limit_bytes == 10
    assert ClearMLCredentials.load("rt-clearml").build().secret_key == "cm-secret"
