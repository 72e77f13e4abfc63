"""Servers that answer a ranged GET with 200: never a corrupt byte, large objects read whole.

Through the fault proxy in front of moto: ``norange`` forwards GETs without their Range header
(``200`` and the whole body: a server that ignores ranges), ``range200`` turns ``206`` into
``200`` and keeps the Content-Range (rclone's ``serve s3``). obstore refuses both answers; the
endpoint is asked once (a one-byte GET) and its large objects are then fetched whole.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlstage.cache import LocalCache
from mlstage.retry import RetryPolicy
from mlstage.sources.s3 import S3Source
from mlstage.store import ranges
from mlstage.testing.faults import Fault, FaultProxy, fault_proxy
from mlstage.testing.s3 import S3Endpoint

pytestmark = pytest.mark.integration

FAST = RetryPolicy(attempts=4, base_seconds=0.005, max_seconds=0.05)
MB = 1024 * 1024


@pytest.fixture
def proxy(s3_env: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    with fault_proxy(s3_env.url) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        yield p


@pytest.mark.parametrize("kind", ["norange", "range200"])
def test_large_objects_are_fetched_whole_and_intact(
    kind: str, proxy: FaultProxy, s3_env: S3Endpoint, bucket: str, tmp_path: Path
) -> None:
    data = {"big.bin": os.urandom(3 * MB + 5), "small.bin": b"s" * 100}
    for key, body in data.items():
        s3_env.client().put_object(Bucket=bucket, Key=f"r/{key}", Body=body)
    proxy.configure(faults=[Fault(kind)])  # every GET
    source = S3Source(bucket, "r", retry=FAST)
    staged = LocalCache(tmp_path / "cache").stage(
        source, source.resolve(), workers=4, part_size=MB, retry=FAST
    )
    got = {p.name: p.read_bytes() for p in staged.path.iterdir()}
    assert got == data
    assert source.supports_ranges is False  # learnt from the one-byte probe
    # the probe, then one whole GET: never four ranged ones
    assert proxy.count("GET", f"/{bucket}/r/big.bin") == 2


@pytest.mark.parametrize("kind", ["norange", "range200"])
def test_a_ranged_read_meeting_a_200_keeps_exactly_its_range(
    kind: str, proxy: FaultProxy, s3_env: S3Endpoint, bucket: str
) -> None:
    """A read that was not preceded by the probe (a manifest from elsewhere) falls back by
    itself: the whole object is read and the asked range kept."""
    body = os.urandom(2 * MB + 3)
    s3_env.client().put_object(Bucket=bucket, Key="r/blob", Body=body)
    source = S3Source(bucket, "r", retry=FAST)
    (obj,) = source.objects(source.resolve().entries)  # probes: 206, ranges are honoured
    assert source.supports_ranges
    ranges.forget()
    proxy.configure(faults=[Fault(kind)])
    for start, end in [(0, MB), (MB, 2 * MB), (2 * MB, 2 * MB + 3), (5, 6)]:
        got = b"".join(source.read(obj, start, end))
        assert hashlib.sha256(got).digest() == hashlib.sha256(body[start:end]).digest()
    assert source.supports_ranges is False
