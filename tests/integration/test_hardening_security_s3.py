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

    tier = S3SharedTier(f"s3://{bucket}/shared")
    artifact_id = "ab" * 16
    with pytest.raises(UnsafePathError, match="leak"):
        tier.publish(artifact_id, data, {"dataset": "d"})
    assert s3_env.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert tier.get(artifact_id) is None

    os.unlink(data / "leak")
    published = tier.publish(artifact_id, data, {"dataset": "d"})
    assert [e.path for e in published.manifest.entries] == ["ok.txt"]


def _files(tier: S3SharedTier, artifact_id: str, cache_dir: Path) -> dict[str, bytes]:
    from mlstage.cache import LocalCache

    artifact = tier.get(artifact_id)
    assert artifact is not None
    source = tier.source(artifact)
    staged = LocalCache(cache_dir).stage(source, artifact.manifest)
    return {p.name: p.read_bytes() for p in staged.path.iterdir()}


def test_racing_s3_publishers_never_mix_their_files(
    tmp_path: Path, s3_env: S3Endpoint, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes publish one artifact at once from a recipe that is not deterministic."""
    tier = S3SharedTier(f"s3://{bucket}/shared")
    artifact_id = "cd" * 16
    first, second = tmp_path / "first", tmp_path / "second"
    for out, tag in ((first, b"A"), (second, b"B")):
        out.mkdir()
        (out / "x.bin").write_bytes(tag * 1000)
        (out / "y.bin").write_bytes(tag * 2000)
    tier.publish(artifact_id, first, {"dataset": "d"})
    late = S3SharedTier(f"s3://{bucket}/shared")
    looks: list[str] = []

    def looked_too_early(aid: str):  # type: ignore[no-untyped-def]
        looks.append(aid)  # the second publisher looked before the first had finished
        return None if len(looks) == 1 else tier.get(aid)

    monkeypatch.setattr(late, "get", looked_too_early)
    won = late.publish(artifact_id, second, {"dataset": "d"})
    first_manifest = tier.get(artifact_id)
    assert first_manifest is not None and won.manifest == first_manifest.manifest
    assert _files(tier, artifact_id, tmp_path / "cache") == {
        "x.bin": b"A" * 1000,
        "y.bin": b"A" * 2000,
    }  # before: B's files under A's manifest, failing their checksums on every stage
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert len({k.split("/")[3] for k in keys if "/data-" in k}) == 1  # the loser's are gone


def test_a_manifest_put_that_landed_and_was_retried_keeps_its_files(
    tmp_path: Path, s3_env: S3Endpoint, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PUT is retried after a timeout; the retry of one that landed answers 412."""
    tier = S3SharedTier(f"s3://{bucket}/shared")
    real_put = tier.store.put

    def landed_then_retried(key: str, data: object, **kwargs: object) -> bool:
        if key.endswith("manifest.json"):
            real_put(key, data, **kwargs)  # type: ignore[arg-type] - landed; answer lost
        return real_put(key, data, **kwargs)  # type: ignore[arg-type] - the retry: 412

    monkeypatch.setattr(tier.store, "put", landed_then_retried)
    out = tmp_path / "first"
    out.mkdir()
    (out / "x.bin").write_bytes(b"A" * 1000)
    (out / "y.bin").write_bytes(b"A" * 2000)
    artifact_id = "34" * 16
    published = tier.publish(artifact_id, out, {"dataset": "d"})
    assert published.manifest.source.startswith(f"s3://{bucket}/shared/artifacts/{artifact_id}/")
    assert _files(tier, artifact_id, tmp_path / "cache") == {
        "x.bin": b"A" * 1000,
        "y.bin": b"A" * 2000,
    }  # before: the publisher took the 412 for a rival's and deleted its own files


def _write_by_hand(
    s3: S3Endpoint, bucket: str, artifact_id: str, tmp_path: Path, data_key: str
) -> S3SharedTier:
    """An artifact whose manifest names ``data_key`` (as an older mlstage, or not mlstage,
    would write it), with one file x.bin uploaded there."""
    from mlstage.shared import manifest_of_dir

    client = s3.client()
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.bin").write_bytes(b"old" * 100)
    base = f"shared/artifacts/{artifact_id}"
    client.upload_file(str(out / "x.bin"), bucket, f"{data_key}/x.bin")
    client.put_object(Bucket=bucket, Key=f"{base}/artifact.json", Body=b"{}")
    manifest = manifest_of_dir(out, source=f"s3://{bucket}/{data_key}")
    client.put_object(Bucket=bucket, Key=f"{base}/manifest.json", Body=manifest.to_json().encode())
    return S3SharedTier(f"s3://{bucket}/shared")


def test_an_artifact_published_in_the_old_layout_still_stages(
    tmp_path: Path, s3_env: S3Endpoint, bucket: str
) -> None:
    artifact_id = "ef" * 16
    tier = _write_by_hand(
        s3_env, bucket, artifact_id, tmp_path, f"shared/artifacts/{artifact_id}/data"
    )
    assert _files(tier, artifact_id, tmp_path / "cache") == {"x.bin": b"old" * 100}


def test_a_manifest_naming_files_outside_its_artifact_is_refused(
    tmp_path: Path, s3_env: S3Endpoint, bucket: str
) -> None:
    from mlstage.errors import SharedTierError

    artifact_id = "12" * 16
    tier = _write_by_hand(s3_env, bucket, artifact_id, tmp_path, "private/secrets")
    artifact = tier.get(artifact_id)
    assert artifact is not None
    with pytest.raises(SharedTierError, match="outside the artifact"):
        tier.source(artifact)
