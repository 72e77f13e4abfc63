"""A burst of uploads under polling: how many re-stages does it set off, and how late is the last?

Run: ``.venv/bin/python -m bench.watch_burst`` (prints one JSON object; ~30 s).

moto's S3 server on 127.0.0.1 (its own process) holds a dataset of ``--objects`` objects; a
thread uploads ``--burst`` more, paced over ``--burst-seconds``. Two pollers watch the prefix
at the same time, each every ``--interval`` seconds with its own state DB:

  mlstage  the Watcher as watch-datasets runs it: settle ``--settle`` s, confirm in the pass
  peer     an ETag-diff poller that announces every new fingerprint (the Watcher, settle 0),
           i.e. what a plain "has the listing changed?" check does

Each announcement would start one re-stage (preprocess + publish + stage). Reported: the
announcements of each, whether each announced the final state, the delay from the last upload
to that announcement, and the seconds of one no-change pass (a listing of the whole prefix).
Ratio: peer announcements / mlstage announcements (re-stages avoided per burst).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from mlstage.sources.s3 import S3Source
from mlstage.specs import DatasetSpec
from mlstage.state import StateStore
from mlstage.store import StoreConfig
from mlstage.testing.s3 import moto_server
from mlstage.watch import WatchEntry, Watcher

BUCKET = "mlstage-bench-watch"


def poll(
    name: str,
    watcher: Watcher,
    entry: WatchEntry,
    interval: float,
    stop: threading.Event,
    out: dict[str, Any],
) -> None:
    announced: list[tuple[float, str]] = []
    passes: list[float] = []
    while not stop.is_set():
        t0 = time.monotonic()
        report = watcher.check([entry])
        passes.append(time.monotonic() - t0)
        announced += [(time.monotonic(), c.new_version) for c in report.changes]
        stop.wait(interval)
    out[name] = {"announced": announced, "passes": len(passes)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=200)
    ap.add_argument("--burst", type=int, default=300)
    ap.add_argument("--burst-seconds", type=float, default=6.0)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--settle", type=float, default=2.0)
    args = ap.parse_args(argv)

    with moto_server() as ep, tempfile.TemporaryDirectory() as tmp:
        s3 = ep.client()
        s3.create_bucket(Bucket=BUCKET)
        for i in range(args.objects):
            s3.put_object(Bucket=BUCKET, Key=f"ds/base-{i:05d}", Body=b"x" * 64)
        spec = DatasetSpec(name="ds", uri=f"s3://{BUCKET}/ds/")

        def resolve(_: DatasetSpec):  # type: ignore[no-untyped-def]
            return S3Source(BUCKET, "ds/", config=StoreConfig.from_env(ep.env())).resolve()

        entries = {
            "mlstage": WatchEntry(dataset=spec, settle_seconds=args.settle),
            "peer": WatchEntry(dataset=spec, settle_seconds=0),
        }
        watchers = {
            n: Watcher(StateStore.open(f"sqlite:///{Path(tmp) / n}.db"), resolve=resolve)
            for n in entries
        }
        t0 = time.monotonic()
        for n, w in watchers.items():
            w.check([entries[n]])  # baselines
        nochange = time.monotonic() - t0

        stop = threading.Event()
        results: dict[str, Any] = {}
        threads = [
            threading.Thread(target=poll, args=(n, w, entries[n], args.interval, stop, results))
            for n, w in watchers.items()
        ]
        for t in threads:
            t.start()
        pace = args.burst_seconds / args.burst
        for i in range(args.burst):
            s3.put_object(Bucket=BUCKET, Key=f"ds/new-{i:05d}", Body=b"y" * 64)
            time.sleep(pace)
        burst_end = time.monotonic()
        final = resolve(spec).fingerprint
        deadline = burst_end + args.settle + 3 * args.interval + 10
        while time.monotonic() < deadline:
            time.sleep(0.2)
            done = all(
                any(v == final for _, v in watchers_announced(watchers[n], n)) for n in entries
            )
            if done:
                time.sleep(2 * args.interval)  # let any stragglers show
                break
        stop.set()
        for t in threads:
            t.join()

    out: dict[str, Any] = {
        "benchmark": "watch_burst",
        "params": vars(args),
        "nochange_pass_seconds_per_watcher": round(nochange / 2, 4),
    }
    for n in entries:
        ann = results[n]["announced"]
        final_at = next((t for t, v in ann if v == final), None)
        out[n] = {
            "announcements": len(ann),
            "announced_final_state": final_at is not None,
            "seconds_after_last_upload": round(final_at - burst_end, 2) if final_at else None,
            "passes": results[n]["passes"],
        }
    m, p = out["mlstage"]["announcements"], out["peer"]["announcements"]
    out["ratio_restages_peer_over_mlstage"] = round(p / m, 2) if m else None
    print(json.dumps(out))
    return 0


def watchers_announced(w: Watcher, name: str) -> list[tuple[float, str]]:
    """Versions this watcher's state DB has announced so far (its watch state's current)."""
    state = w.coord.watch_state("ds")
    return [(0.0, state.current)] if state else []


if __name__ == "__main__":
    raise SystemExit(main())
