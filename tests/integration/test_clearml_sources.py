"""ClearML datasets written by ClearML's own code (tests/fixtures/clearml), read without a server.

The fixtures are a parent dataset and a child that modifies, adds and removes files; the child's
files live in both datasets' zip chunks. ``clearml://`` through the SDK needs a live ClearML
server: that test runs only when CLEARML_API_HOST is set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from mlstage.cache import LocalCache
from mlstage.errors import IntegrityError, ObjectNotFound, SourceError, UnsafePathError
from mlstage.retry import RetryPolicy
from mlstage.sources import open_source
from mlstage.testing.s3 import S3Endpoint

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "clearml"
META = json.loads((FIXTURES / "datasets.json").read_text())
DATASETS = "mlstage/.datasets/tiny"
FAST = RetryPolicy(attempts=3, base_seconds=0.001, max_seconds=0.01)


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """A writable copy of the fixture storage (tests may damage it)."""
    dst = tmp_path / "storage"
    shutil.copytree(FIXTURES / "storage", dst)
    return dst


def test_storage_only_folder_child_with_parent(storage: Path, tmp_path: Path) -> None:
    uri = f"clearml+file://{storage}/{DATASETS}/tiny.{META['child']}"
    source = open_source(uri)
    manifest = source.resolve()
    assert {e.path for e in manifest.entries} == set(META["files"])
    assert all(e.checksum and e.checksum.startswith("sha256:") for e in manifest.entries)
    cache = LocalCache(tmp_path / "cache")
    staged = cache.stage(source, manifest, workers=4)
    assert _tree(staged.path) == META["files"]
    # the parent is its own version, with the file the child removed
    parent = open_source(f"clearml+file://{storage}/{DATASETS}/tiny.{META['parent']}")
    pm = parent.resolve()
    assert pm.fingerprint != manifest.fingerprint
    assert "docs/README.txt" in {e.path for e in pm.entries}
    # files shared with the child are already in the cache: only the rest is fetched
    again = cache.stage(parent, pm, workers=4)
    assert again.objects_fetched < len(pm.entries)


def test_storage_only_s3(s3_env: S3Endpoint, bucket: str, tmp_path: Path) -> None:
    client = s3_env.client()
    for p in (FIXTURES / "storage").rglob("*"):
        if p.is_file():
            key = "clearml/" + p.relative_to(FIXTURES / "storage").as_posix()
            client.put_object(Bucket=bucket, Key=key, Body=p.read_bytes())
    uri = f"clearml+s3://{bucket}/clearml/{DATASETS}/tiny.{META['child']}"
    source = open_source(uri)
    manifest = source.resolve()
    staged = LocalCache(tmp_path / "cache").stage(source, manifest, workers=4)
    assert _tree(staged.path) == META["files"]
    with pytest.raises(ObjectNotFound, match="state.json"):
        open_source(f"clearml+s3://{bucket}/clearml/{DATASETS}/tiny.nope").resolve()


def _chunk_of(storage: Path, dataset: str, member: str) -> Path:
    for z in (storage / DATASETS / f"tiny.{dataset}" / "artifacts").glob("*/*.zip"):
        with zipfile.ZipFile(z) as zf:
            if member in zf.namelist():
                return z
    raise AssertionError(member)


def _rewrite(zpath: Path, replace: dict[str, bytes], rename: dict[str, str] | None = None) -> None:
    with zipfile.ZipFile(zpath) as zf:
        items = [(i.filename, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(zpath, "w") as zf:
        for name, data in items:
            zf.writestr((rename or {}).get(name, name), replace.get(name, data))


def test_a_damaged_chunk_is_refused_and_nothing_is_published(storage: Path, tmp_path: Path) -> None:
    z = _chunk_of(storage, META["child"], "labels.csv")
    _rewrite(z, {"labels.csv": b"id,label\n1,cat\n2,dog\n3,bat\n"})  # same size, other bytes
    source = open_source(f"clearml+file://{storage}/{DATASETS}/tiny.{META['child']}")
    cache = LocalCache(tmp_path / "cache")
    with pytest.raises(IntegrityError, match="labels.csv"):
        cache.stage(source, source.resolve(), workers=2, retry=FAST)
    assert not any((tmp_path / "cache" / "datasets").iterdir())


def test_escaping_names_in_state_json_are_refused(storage: Path, tmp_path: Path) -> None:
    folder = storage / DATASETS / f"tiny.{META['child']}"
    state_path = folder / "artifacts" / "state" / "state.json"
    state = json.loads(state_path.read_text())
    state["dataset_file_entries"][0]["relative_path"] = "../../outside.txt"
    state_path.write_text(json.dumps(state))
    with pytest.raises(UnsafePathError, match="outside.txt"):
        open_source(f"clearml+file://{folder}").resolve()


def test_a_hash_in_state_json_that_is_no_digest_is_refused(storage: Path) -> None:
    folder = storage / DATASETS / f"tiny.{META['child']}"
    state_path = folder / "artifacts" / "state" / "state.json"
    state = json.loads(state_path.read_text())
    state["dataset_file_entries"][0]["hash"] = "../../../etc/passwd"  # names a cache file
    state_path.write_text(json.dumps(state))
    with pytest.raises(SourceError, match="no sha256 hex digest"):
        open_source(f"clearml+file://{folder}").resolve()


def test_a_missing_parent_is_named(storage: Path) -> None:
    shutil.rmtree(storage / DATASETS / f"tiny.{META['parent']}")
    with pytest.raises(ObjectNotFound, match=META["parent"]):
        open_source(f"clearml+file://{storage}/{DATASETS}/tiny.{META['child']}").resolve()


@pytest.mark.clearml_live
@pytest.mark.skipif(
    not os.environ.get("CLEARML_API_HOST"),
    reason="needs a live ClearML server: set CLEARML_API_HOST (+ credentials) and "
    "MLSTAGE_TEST_CLEARML_DATASET=<dataset id>",
)
def test_sdk_path_against_a_live_server(tmp_path: Path) -> None:
    dataset_id = os.environ.get("MLSTAGE_TEST_CLEARML_DATASET")
    if not dataset_id:
        pytest.skip("set MLSTAGE_TEST_CLEARML_DATASET to a dataset id on that server")
    from clearml import Dataset

    source = open_source(f"clearml://{dataset_id}")
    manifest = source.resolve()
    staged = LocalCache(tmp_path / "cache").stage(source, manifest, workers=8)
    theirs = Path(Dataset.get(dataset_id=dataset_id).get_local_copy())
    assert _tree(staged.path) == _tree(theirs)


def test_a_server_uri_on_an_unconfigured_machine_is_one_line_naming_the_fix(
    tmp_path: Path,
) -> None:
    """ClearML's SDK, really asked, with no configuration: its banner becomes one line."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}
    env.update(HOME=str(tmp_path), MLSTAGE_HOME=str(tmp_path / "home"))
    mlstage = str(Path(sys.executable).parent / "mlstage")
    done = subprocess.run(
        [mlstage, "stage", "clearml://abc123"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "ClearML is not configured on this machine" in line and "CLEARML_API_HOST" in line
