"""The S3 shared tier never uploads what a link in an artifact points to (moto server)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlstage.errors import UnsafePathError
from mlstage.shared import S3SharedTier
from mlstage.testing.s3 import S3Endpoint

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-Value-42"


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_s3_publish_refuses_links_and_uploads_nothing(
    tmp_path: Path, s3_env: S3Endpoint, bucket: str, kind: str
) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text(SECRET)
    data = tmp_path / "data"
    data.mkdir()
    (data / "ok.txt").write_text("ok")
    target = secret / "key.txt" if kind == "file" else secret
    os.symlink(target, data / "leak")

    tier = S3SharedTier(f"s3://{bucket}/shared", client=s3_env.client())
    artifact_id = "ab" * 16
    with pytest.raises(UnsafePathError, match="leak"):
        tier.publish(artifact_id, data, {"dataset": "d"})
    assert s3_env.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert tier.get(artifact_id) is None

    os.unlink(data / "leak")
    published = tier.publish(artifact_id, data, {"dataset": "d"})
    assert [e.path for e in published.manifest.entries] == ["ok.txt"]
