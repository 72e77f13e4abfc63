"""Cache hit cost: mlstage's LocalCache vs ClearML's StorageManager on the same files.

Part 1, per-object hit latency at 1k, 10k and 100k cached objects. Both caches hold the very
same files (each mlstage object is hard-linked into ClearML's cache folder under the name
StorageManager derives from the URL: ``md5(url).<basename>`` in
``$CLEARML_CACHE_DIR/storage_manager/global``), and both are asked for the same random
sample of URLs. mlstage answers with ``LocalCache.cached_object`` (one indexed join and one
stat); ClearML with ``StorageManager.get_local_copy(url, extract_archive=False)``. ClearML
runs in a child process: clearml 2.1.x from this venv, and, when ``--clearml-old-python``
names a python with clearml==1.16.5, the old version that lists its cache folder on every
lookup (clearml/clearml#1352). Create that venv with::

    python3 -m venv /tmp/clearml116 && /tmp/clearml116/bin/pip install clearml==1.16.5

Objects are written once and indexed in bulk (``CacheIndex.add_objects_bulk``), which is
how 100k objects take seconds rather than minutes to set up.

Part 2, a warm whole-dataset hit on a real N-file dataset tree (default 100k files, hard
links into the objects above, materialised by the cache's own tree builder): the
``lookup(fingerprint)`` a stager does, ``stage()`` with the manifest in hand (which also
computes the manifest's fingerprint, an O(files) cost of mlstage.manifest reported
separately), and as the peer the per-file hits a per-file cache needs for the same dataset
(ClearML 2.1 ``get_local_copy`` for every file).

Run: ``.venv/bin/python -m bench.cache_lookup [--clearml-old-python /tmp/clearml116/bin/python]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mlstage.cache import LocalCache
from mlstage.cache.index import ObjectRow
from mlstage.cache.objects import source_key
from mlstage.cache.records import write_record
from mlstage.manifest import Entry, Manifest
from mlstage.sources.local import FolderSource

BASE_URL = "http://127.0.0.1:9/bench/obj/"

CLEARML_CHILD = r"""
import json, os, sys, time
args = json.loads(sys.argv[1])
os.environ["CLEARML_CACHE_DIR"] = args["cache_dir"]
import clearml
from clearml import StorageManager
StorageManager.set_cache_file_limit(args["limit"])
urls = json.load(open(args["urls"]))
for u in urls[:20]:  # warm up: helper construction, imports
    assert StorageManager.get_local_copy(u, extract_archive=False)
rounds = []
budget = args["budget"]
for _ in range(args["rounds"]):
    times = []
    started = time.perf_counter()
    for u in urls:
        t = time.perf_counter()
        p = StorageManager.get_local_copy(u, extract_archive=False)
        times.append(time.perf_counter() - t)
        assert p and p.startswith(args["cache_dir"]), p
        if args["mode"] == "lookup" and len(times) >= 5 and time.perf_counter() - started > budget:
            break
    rounds.append({"times": times, "total": time.perf_counter() - started})
print(json.dumps({"version": clearml.__version__, "rounds": rounds}))
"""


def _best_of(rounds: list[list[float]]) -> dict[str, Any]:
    """Stats of the round with the lowest median (the least disturbed by other load)."""
    best = min(rounds, key=statistics.median)
    out: dict[str, Any] = _stats_us(best)
    out["round_medians_us"] = [round(statistics.median(r) * 1e6, 1) for r in rounds]
    return out


def _stats_us(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {
        "n": len(times),
        "median_us": round(statistics.median(times) * 1e6, 1),
        "p95_us": round(times[min(len(times) - 1, int(len(times) * 0.95))] * 1e6, 1),
        "mean_us": round(statistics.fmean(times) * 1e6, 1),
    }


def _clearml(
    python: str,
    cache_dir: Path,
    urls: list[str],
    limit: int,
    mode: str,
    budget: float,
    rounds: int = 1,
) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(urls, f)
    args = {
        "cache_dir": str(cache_dir),
        "urls": f.name,
        "limit": limit,
        "mode": mode,
        "budget": budget,
        "rounds": rounds,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARML_")}
    env["CLEARML_LOG_LEVEL"] = "ERROR"
    try:
        out = subprocess.run(
            [python, "-c", CLEARML_CHILD, json.dumps(args)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"clearml child ({python}) failed:\n{exc.stderr[-2000:]}") from exc
    finally:
        os.unlink(f.name)
    return json.loads(out.strip().splitlines()[-1])


class Corpus:
    """N small objects held by both caches as the same inodes."""

    def __init__(self, root: Path) -> None:
        self.cache = LocalCache(root / "mlstage")
        self.clearml_dir = root / "clearml"
        self.clearml_files = self.clearml_dir / "storage_manager" / "global"
        self.clearml_files.mkdir(parents=True)
        self.entries: list[Entry] = []
        self.digests: list[str] = []
        for i in range(256):
            (self.cache.root / "objects" / f"{i:02x}").mkdir(exist_ok=True)

    @staticmethod
    def url(entry: Entry) -> str:
        return BASE_URL + entry.locator

    def grow(self, n: int) -> float:
        from clearml.storage.cache import CacheManager

        started = time.perf_counter()
        rows = []
        for i in range(len(self.entries), n):
            data = f"object {i:08d} ".encode() * 4
            digest = hashlib.sha256(data).hexdigest()
            name = f"f{i:06d}.bin"
            entry = Entry(
                path=f"d{i // 1000:03d}/{name}", size=len(data), etag=digest[:32], locator=name
            )
            path = self.cache.object_path(digest)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            os.write(fd, data)
            st = os.fstat(fd)
            os.close(fd)
            os.link(
                path,
                self.clearml_files / CacheManager.CacheContext.get_hashed_url_file(self.url(entry)),
            )
            rows.append(
                ObjectRow(digest, len(data), source_key(BASE_URL, entry), st.st_ino, st.st_mtime_ns)
            )
            self.entries.append(entry)
            self.digests.append(digest)
        self.cache.index.add_objects_bulk(rows)
        return time.perf_counter() - started


def _mlstage_lookups(cache: LocalCache, sample: list[Entry]) -> list[float]:
    for e in sample[:20]:
        assert cache.cached_object(BASE_URL, e) is not None
    times = []
    for e in sample:
        t = time.perf_counter()
        p = cache.cached_object(BASE_URL, e)
        times.append(time.perf_counter() - t)
        assert p is not None
    return times


def _materialise(cache: LocalCache, manifest: Manifest, digests: dict[str, str]) -> float:
    """Build the dataset tree with the cache's own steps (the download is already done)."""
    started = time.perf_counter()
    fp = manifest.fingerprint
    cache.index.begin_staging(fp, manifest.source, len(manifest), manifest.total_bytes)
    ordered = [digests[e.path] for e in manifest.entries]
    cache.index.pin(fp, ordered)
    cache.trees.build(manifest, ordered, fp)
    write_record(cache.manifest_path(fp), manifest, ordered)
    cache.trees.publish(fp)
    cache.index.finish_staging(fp)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="cached-object counts")
    ap.add_argument("--lookups", type=int, default=2000, help="lookups per size and system")
    ap.add_argument(
        "--old-budget", type=float, default=4.0, help="seconds per size for clearml 1.16.5"
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds per size; best median kept")
    ap.add_argument("--dataset-files", type=int, default=100_000)
    ap.add_argument("--clearml-old-python", default=None, help="a python with clearml==1.16.5")
    ap.add_argument(
        "--workdir", default=None, help="where to build the caches (default: a temp dir)"
    )
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    rng = random.Random(42)

    with tempfile.TemporaryDirectory(prefix="mlstage-bench-", dir=args.workdir) as tmp:
        corpus = Corpus(Path(tmp))
        results: dict[str, Any] = {"sizes": {}}
        for n in sizes:
            setup = corpus.grow(n)
            sample = [corpus.entries[rng.randrange(n)] for _ in range(args.lookups)]
            urls = [corpus.url(e) for e in sample]
            ml = _best_of([_mlstage_lookups(corpus.cache, sample) for _ in range(args.rounds)])
            new = _clearml(
                sys.executable, corpus.clearml_dir, urls, n + 1000, "lookup", 1e9, args.rounds
            )
            row: dict[str, Any] = {
                "setup_seconds": round(setup, 2),
                "mlstage": ml,
                f"clearml_{new['version']}": _best_of([r["times"] for r in new["rounds"]]),
            }
            row["ratio_mlstage_vs_clearml_new"] = round(
                ml["median_us"] / row[f"clearml_{new['version']}"]["median_us"], 3
            )
            if args.clearml_old_python:
                old = _clearml(
                    args.clearml_old_python,
                    corpus.clearml_dir,
                    urls,
                    n + 1000,
                    "lookup",
                    args.old_budget,
                )
                row[f"clearml_{old['version']}"] = _best_of([r["times"] for r in old["rounds"]])
                row["ratio_mlstage_vs_clearml_old"] = round(
                    ml["median_us"] / row[f"clearml_{old['version']}"]["median_us"], 4
                )
            results["sizes"][str(n)] = row
        first, last = str(sizes[0]), str(sizes[-1])
        flat = (
            results["sizes"][last]["mlstage"]["median_us"]
            / results["sizes"][first]["mlstage"]["median_us"]
        )
        results["mlstage_flatness_largest_vs_smallest"] = round(flat, 3)

        def mid(size: str) -> float:
            return statistics.median(results["sizes"][size]["mlstage"]["round_medians_us"])

        results["mlstage_flatness_median_of_rounds"] = round(mid(last) / mid(first), 3)

        # -- part 2: a warm whole-dataset hit on a real tree ------------------------------
        m = min(args.dataset_files, len(corpus.entries))
        if m < args.dataset_files:
            corpus.grow(args.dataset_files)
            m = args.dataset_files
        entries = corpus.entries[:m]
        manifest = Manifest(source=BASE_URL, entries=entries)
        digests = {e.path: d for e, d in zip(entries, corpus.digests[:m], strict=True)}
        build = _materialise(corpus.cache, manifest, digests)
        t = time.perf_counter()
        fp = manifest.fingerprint
        fingerprint_ms = (time.perf_counter() - t) * 1e3
        cache = corpus.cache
        assert sum(1 for _ in os.scandir(cache.dataset_path(fp) / "d000")) == min(m, 1000)
        lookups = []
        for _ in range(1000):
            t = time.perf_counter()
            hit = cache.lookup(fp)
            lookups.append(time.perf_counter() - t)
            assert hit is not None and hit.files == m
        fresh = []
        for _ in range(5):  # a new process's first hit: opening the cache and its index
            t = time.perf_counter()
            hit = LocalCache(cache.root).lookup(fp)
            fresh.append(time.perf_counter() - t)
            assert hit is not None
        source = FolderSource(Path(tmp), uri=BASE_URL)
        stage_hits = []
        for _ in range(3):
            t = time.perf_counter()
            staged = cache.stage(source, manifest)
            stage_hits.append(time.perf_counter() - t)
            assert staged.hit
        peer = _clearml(
            sys.executable,
            corpus.clearml_dir,
            [corpus.url(e) for e in entries],
            m + 1000,
            "dataset",
            0,
        )
        lookup_ms = statistics.median(lookups) * 1e3
        results["whole_dataset"] = {
            "files": m,
            "tree_build_seconds": round(build, 2),
            "mlstage_lookup_ms": round(lookup_ms, 4),
            "mlstage_open_and_lookup_ms": round(statistics.median(fresh) * 1e3, 3),
            "mlstage_stage_hit_ms": round(statistics.median(stage_hits) * 1e3, 1),
            "of_which_manifest_fingerprint_ms": round(fingerprint_ms, 1),
            f"clearml_{peer['version']}_per_file_hits_ms": round(
                peer["rounds"][0]["total"] * 1e3, 1
            ),
            "ratio_mlstage_lookup_vs_clearml": round(
                lookup_ms / (peer["rounds"][0]["total"] * 1e3), 6
            ),
            "goal_lookup_under_50ms": lookup_ms < 50,
        }
        results["goals"] = {
            "per_hit_no_slower_than_clearml_new": all(
                r["ratio_mlstage_vs_clearml_new"] <= 1.0 for r in results["sizes"].values()
            ),
            "flat_within_1_2x": flat <= 1.2,
            "whole_dataset_under_50ms": lookup_ms < 50,
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
