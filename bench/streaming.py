"""Train on the first shard: time to first batch and epoch times, three ways, one run.

An S3 endpoint (moto) sits behind a slow link (added latency, one shared bandwidth cap).
The same WebDataset reader consumes the same tar shards, one simulated training step per
batch, in three modes:

  (a) full_copy    mlstage stages the whole dataset (16 concurrent fetches), then reads it
  (b) first_shard  mlstage streams: reading starts on the first shard while the rest land
  (c) wds_http     WebDataset streams straight from the endpoint (``pipe:curl`` of
                   presigned URLs), every epoch

plus ``one_shard_s``: one shard fetched alone over the same link (the floor for (b)'s first
batch). Goals: (b) first batch <= 1.5x one shard; (b) epoch 1 <= (a) epoch 1; (b) beats (c)
on epoch 2 because its data is local. Prints one JSON object.

    .venv/bin/python -m bench.streaming [--shards 8 --shard-mb 6 --bandwidth-mb 2 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mlstage.cache import LocalCache
from mlstage.recipes.shard import ShardParams, write_shards
from mlstage.sources.s3 import S3Source
from mlstage.store import Bucket, StoreConfig
from mlstage.stream import open_stream
from mlstage.testing.s3 import CREDENTIALS, moto_server
from mlstage.testing.slow_proxy import slow_proxy

BUCKET = "mlstage-bench-stream"


def make_shards(root: Path, shards: int, shard_mb: float, sample_kb: int) -> list[Path]:
    raw = root / "raw"
    raw.mkdir(parents=True)
    per = max(1, int(shard_mb * 1024 // sample_kb))
    for i in range(shards * per):
        (raw / f"s{i:06d}.input.bin").write_bytes(os.urandom(sample_kb * 1024))
        (raw / f"s{i:06d}.label.txt").write_text(str(i % 10))
    return write_shards(raw, root / "shards", ShardParams(max_samples=per))


def consume(samples: Iterable[dict[str, Any]], batch: int, step_s: float) -> dict[str, float]:
    """Iterate one epoch in batches, sleeping ``step_s`` per batch (the training step)."""
    t0 = time.monotonic()
    first = None
    n = 0
    for _ in samples:
        n += 1
        if n % batch == 0:
            if first is None:
                first = time.monotonic() - t0
            time.sleep(step_s)
    if n % batch and step_s:
        time.sleep(step_s)
    return {
        "first_batch_s": round(first if first is not None else time.monotonic() - t0, 3),
        "epoch_s": round(time.monotonic() - t0, 3),
        "samples": n,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--shard-mb", type=float, default=6.0)
    ap.add_argument("--sample-kb", type=int, default=256)
    ap.add_argument("--bandwidth-mb", type=float, default=2.0, help="link MB/s, shared")
    ap.add_argument("--latency", type=float, default=0.03, help="seconds added each way")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--step-ms", type=float, default=50.0, help="simulated training step")
    args = ap.parse_args(argv)

    import webdataset as wds

    from mlstage.adapters.webdataset import ReadyShards, webdataset_pipeline

    for k, v in CREDENTIALS.items():
        os.environ.setdefault(k, v)
    step = args.step_ms / 1000
    out: dict[str, Any] = {"config": vars(args)}

    def local_wds(paths: list[str]) -> Any:
        return wds.WebDataset(paths, shardshuffle=False, empty_check=False)

    with tempfile.TemporaryDirectory(prefix="mlstage-bench-") as tmp, moto_server() as ep:
        root = Path(tmp)
        shards = make_shards(root, args.shards, args.shard_mb, args.sample_kb)
        direct = ep.client()
        direct.create_bucket(Bucket=BUCKET)
        for p in shards:
            direct.upload_file(str(p), BUCKET, f"data/{p.name}")
        total = sum(p.stat().st_size for p in shards)
        out["dataset"] = {"shards": len(shards), "bytes": total}

        with slow_proxy(ep.port, latency=args.latency, bandwidth=args.bandwidth_mb * 1e6) as link:
            store = Bucket(BUCKET, StoreConfig.from_env(endpoint=link.url))
            source = S3Source(store, "data/")
            manifest = source.resolve()
            head = manifest.entries[0]

            t0 = time.monotonic()
            got = sum(len(c) for c in source.read(next(iter(source.objects([head])))))
            assert got == head.size
            out["one_shard_s"] = round(time.monotonic() - t0, 3)

            # (a) wait for the full copy, then read
            cache_a = LocalCache(root / "cache-a")
            t0 = time.monotonic()
            staged = cache_a.stage(source, manifest, workers=16)
            copy_s = time.monotonic() - t0
            paths = [str(staged.path / e.path) for e in manifest.entries]
            e1 = consume(local_wds(paths), args.batch, step)
            a = {
                "copy_s": round(copy_s, 3),
                "first_batch_s": round(copy_s + e1["first_batch_s"], 3),
                "epoch1_s": round(copy_s + e1["epoch_s"], 3),
                "epoch2_s": consume(local_wds(paths), args.batch, step)["epoch_s"],
                "samples": e1["samples"],
            }

            # (b) first-shard: read while staging
            cache_b = LocalCache(root / "cache-b")
            src_b = S3Source(store, "data/")
            with open_stream(cache_b, src_b, manifest, workers=16) as stream:
                t_open = time.monotonic()
                shard_at: list[float] = []

                def ready_urls(src: Iterable[dict[str, str]]) -> Iterator[dict[str, str]]:
                    for item in src:  # when the reader got each shard (not when it landed)
                        shard_at.append(time.monotonic() - t_open)
                        yield item

                e1 = consume(
                    wds.DataPipeline(ReadyShards(stream), ready_urls, wds.tarfile_to_samples()),
                    args.batch,
                    step,
                )
                stream.wait()
                st = stream.stats()
            with open_stream(cache_b, src_b, manifest) as again:  # epoch 2: a cache hit
                e2 = consume(webdataset_pipeline(again), args.batch, step)
            b = {
                "first_batch_s": e1["first_batch_s"],
                "epoch1_s": e1["epoch_s"],
                "epoch2_s": e2["epoch_s"],
                "samples": e1["samples"],
                "reader_got_first_shard_s": round(shard_at[0], 3),
                **st.as_metrics(),
            }

            # (c) WebDataset straight from the endpoint, every epoch (presigned by boto3, as a
            # user of WebDataset would)
            import boto3

            client = boto3.session.Session().client("s3", endpoint_url=link.url)
            urls = [
                "pipe:curl -s -f "
                + shlex.quote(
                    client.generate_presigned_url(
                        "get_object",
                        Params={"Bucket": BUCKET, "Key": f"data/{e.path}"},
                        ExpiresIn=3600,
                    )
                )
                for e in manifest.entries
            ]
            e1 = consume(local_wds(urls), args.batch, step)
            e2 = consume(local_wds(urls), args.batch, step)
            c = {
                "first_batch_s": e1["first_batch_s"],
                "epoch1_s": e1["epoch_s"],
                "epoch2_s": e2["epoch_s"],
                "samples": e1["samples"],
            }

    out["modes"] = {"full_copy": a, "first_shard": b, "wds_http": c}
    ratios = {
        "first_shard_first_batch_vs_one_shard": round(b["first_batch_s"] / out["one_shard_s"], 3),
        "first_shard_epoch1_vs_full_copy": round(b["epoch1_s"] / a["epoch1_s"], 3),
        "first_shard_first_batch_vs_full_copy": round(b["first_batch_s"] / a["first_batch_s"], 3),
        "wds_http_epoch2_vs_first_shard": round(c["epoch2_s"] / b["epoch2_s"], 3),
        "wds_http_epoch1_vs_first_shard": round(c["epoch1_s"] / b["epoch1_s"], 3),
    }
    out["ratios"] = ratios
    out["goals"] = {
        "first_batch_within_1_5x_one_shard": ratios["first_shard_first_batch_vs_one_shard"] <= 1.5,
        "epoch1_no_worse_than_full_copy": ratios["first_shard_epoch1_vs_full_copy"] <= 1.0,
        "epoch2_beats_wds_http": ratios["wds_http_epoch2_vs_first_shard"] > 1.0,
        "same_samples": a["samples"] == b["samples"] == c["samples"],
    }
    return out


if __name__ == "__main__":
    json.dump(main(sys.argv[1:]), sys.stdout)
    sys.stdout.write("\n")
