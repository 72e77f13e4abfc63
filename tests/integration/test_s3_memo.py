"""Remembered S3 endpoints (``sources/s3_memo.py``) against a real S3 endpoint over HTTP.

A later process stages without importing botocore; a remembered endpoint that no longer
applies is forgotten on its first failed listing and staging goes on as without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlstage.cache import LocalCache
from mlstage.retry import RetryPolicy
from mlstage.sources import s3_memo
from mlstage.sources.s3 import S3Source
from mlstage.sources.s3_memo import EndpointMemo
from mlstage.testing.net import free_port
from mlstage.testing.s3 import S3Endpoint

pytestmark = pytest.mark.integration

FAST_RETRY = RetryPolicy(attempts=2, base_seconds=0.005, max_seconds=0.02)
FILES = {f"part-{i:02d}.bin": bytes([i]) * (1000 + i) for i in range(12)}
# the CLI's stage command in a fresh process; then, on stderr, whether botocore was imported
STAGE = """
import json, sys
from mlstage.cli import _run
sys.argv = ["mlstage", "stage", *sys.argv[1:]]
rc = _run()
print(json.dumps({"rc": rc, "botocore": "botocore" in sys.modules}), file=sys.stderr)
"""


@pytest.fixture
def dataset(bucket: str, s3_env: S3Endpoint) -> str:
    client = s3_env.client()
    for name, data in FILES.items():
        client.put_object(Bucket=bucket, Key=f"ds/{name}", Body=data)
    return bucket


def _tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def _expected() -> dict[str, str]:
    return {k: hashlib.sha256(v).hexdigest() for k, v in FILES.items()}


def _stage_in_new_process(uri: str, home: Path, endpoints: Path, to: Path) -> tuple[dict, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSTAGE_")}
    env.update({"MLSTAGE_HOME": str(home), "MLSTAGE_ENDPOINTS_DIR": str(endpoints)})
    proc = subprocess.run(
        [sys.executable, "-c", STAGE, uri, "--to", str(to), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), json.loads(proc.stderr.strip().splitlines()[-1])


def test_a_later_process_stages_without_importing_botocore(
    dataset: str, tmp_path: Path, home: Path
) -> None:
    uri = f"s3://{dataset}/ds/"
    endpoints = tmp_path / "endpoints"
    first, how = _stage_in_new_process(uri, tmp_path / "h1", endpoints, tmp_path / "out1")
    assert how == {"rc": 0, "botocore": True}  # nothing remembered yet: botocore decides
    (memo,) = endpoints.glob("*.json")
    text = memo.read_text()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in text
    assert os.environ["AWS_ACCESS_KEY_ID"] not in text  # no credential of any kind
    assert json.loads(text)["bucket"] == dataset

    # a new node-local cache (nothing to hit), the same AWS configuration
    second, how = _stage_in_new_process(uri, tmp_path / "h2", endpoints, tmp_path / "out2")
    assert how == {"rc": 0, "botocore": False}
    assert second["bytes_fetched"] == sum(map(len, FILES.values()))
    assert second["version"] == first["version"]
    assert _tree(tmp_path / "out2") == _tree(tmp_path / "out1") == _expected()


def _rewrite(memo_dir: Path, **template: str) -> dict:
    (path,) = memo_dir.glob("*.json")
    record = json.loads(path.read_text())
    stale = json.loads(path.read_text())
    stale["template"].update(template)
    path.write_text(json.dumps(stale))
    s3_memo._live.clear()  # as a new process would: read from the file
    return record


@pytest.mark.parametrize(
    "stale",
    [
        {"path_prefix": "/some-other-bucket/"},  # the store answers 404 NoSuchBucket
        {"netloc": f"127.0.0.1:{free_port()}"},  # nothing listens there any more
    ],
    ids=["wrong-bucket-path", "dead-endpoint"],
)
def test_a_remembered_endpoint_that_fails_is_forgotten_and_staging_goes_on(
    dataset: str, tmp_path: Path, home: Path, stale: dict[str, str]
) -> None:
    memo = EndpointMemo(tmp_path / "endpoints")
    S3Source(dataset, "ds", memo=memo, retry=FAST_RETRY).resolve()  # learnt and remembered
    good = _rewrite(memo.folder, **stale)

    source = S3Source(dataset, "ds", memo=memo, retry=FAST_RETRY)
    manifest = source.resolve()
    staged = LocalCache(tmp_path / "cache").stage(source, manifest)
    assert _tree(staged.path) == _expected()
    # the failed template was dropped and the one botocore gave again is remembered
    (path,) = memo.folder.glob("*.json")
    assert json.loads(path.read_text()) == good


def test_a_remembered_endpoint_reads_without_building_a_client(
    dataset: str, tmp_path: Path, home: Path
) -> None:
    memo = EndpointMemo(tmp_path / "endpoints")
    S3Source(dataset, "ds", memo=memo).resolve()
    s3_memo._live.clear()

    source = S3Source(dataset, "ds", memo=memo)
    staged = LocalCache(tmp_path / "cache").stage(source, source.resolve(), part_size=1024 * 1024)
    assert _tree(staged.path) == _expected()
    assert source._client is None  # listing and every GET went through the remembered one


def test_a_read_before_any_listing_does_not_trust_a_remembered_endpoint(
    dataset: str, tmp_path: Path, home: Path
) -> None:
    memo = EndpointMemo(tmp_path / "endpoints")
    manifest = S3Source(dataset, "ds", memo=memo).resolve()
    _rewrite(memo.folder, path_prefix="/some-other-bucket/")  # would read the wrong bucket

    source = S3Source(dataset, "ds", memo=memo, retry=FAST_RETRY)  # a manifest from elsewhere
    staged = LocalCache(tmp_path / "cache").stage(source, manifest)
    assert _tree(staged.path) == _expected()
    assert source._client is not None  # botocore decided
