"""The HTTP receiver against the real S3 endpoint: a burst of posted notifications settles into
one change for the final state; bad bodies are refused. No Prefect needed: changes are
collected instead of emitted."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from mlstage.notify import Receiver
from mlstage.sources.s3 import S3Source
from mlstage.specs import DatasetSpec
from mlstage.state import StateStore
from mlstage.testing.net import free_port, wait_until
from mlstage.testing.s3 import S3Endpoint
from mlstage.watch import Change, WatchEntry, Watcher, WatchList

pytestmark = pytest.mark.integration


def notification(bucket: str, key: str) -> str:
    rec = {
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key}},
    }
    return json.dumps({"Records": [rec]})


def test_a_burst_of_posts_settles_into_one_change(
    s3_env: S3Endpoint, bucket: str, home: Path
) -> None:
    client = s3_env.client()
    client.put_object(Bucket=bucket, Key="ds/first.bin", Body=b"1")
    entry = WatchEntry(
        dataset=DatasetSpec(name="ds", uri=f"s3://{bucket}/ds/"), settle_seconds=0.5, poll=False
    )
    wl = WatchList(datasets=[entry])
    store = StateStore.open(f"sqlite:///{home / 'state.db'}")
    watcher = Watcher(store)
    assert watcher.check([entry]).unchanged == ["ds"]  # the baseline

    changes: list[Change] = []
    lock = threading.Lock()

    def collect(c: Change) -> None:
        with lock:
            changes.append(c)

    receiver = Receiver(wl, watcher, collect, port=free_port(), quiet_seconds=1.0).start()
    url = f"http://127.0.0.1:{receiver.port}/"
    try:
        with httpx.Client(timeout=10) as http:
            for i in range(30):
                key = f"ds/obj-{i:03d}.bin"
                client.put_object(Bucket=bucket, Key=key, Body=str(i).encode())
                r = http.post(url, content=notification(bucket, key))
                assert r.status_code == 202 and r.json() == {"datasets": ["ds"]}
            other = http.post(url, content=notification(bucket, "elsewhere/x"))
            assert other.json() == {"datasets": []}
            assert http.post(url, content=b"not json").status_code == 400
            final = S3Source(bucket, "ds/").resolve().fingerprint
            wait_until(lambda: len(changes) >= 1, timeout=30, what="the settled change")
            time.sleep(2.5)  # more checks would have run by now
            assert http.get(url).json() == {"ok": True, "settling": 0}
    finally:
        receiver.stop()
    (change,) = changes
    assert change.new_version == final and change.dataset == "ds"
    assert [v.fingerprint for v in store.versions("ds")][-1] == final
    assert len(store.versions("ds")) == 2


def test_mlstage_notify_serve_answers_over_http(home: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    wl = tmp_path / "watchlist.json"
    wl.write_text(json.dumps({"datasets": [{"dataset": {"name": "ds", "uri": "s3://bkt/ds/"}}]}))
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlstage"), "notify", "serve", "--port", str(port)],
        env={**os.environ, "MLSTAGE_WATCHLIST": str(wl)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until(lambda: httpx.get(url, timeout=1).status_code == 200, timeout=60, what="serve")
        r = httpx.post(url, content=notification("bkt", "other/key"), timeout=10)
        assert r.status_code == 202 and r.json() == {"datasets": []}
    finally:
        proc.terminate()
        proc.wait(timeout=20)
