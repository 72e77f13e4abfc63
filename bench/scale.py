"""Datasets of many small files: mlstage against cp -r and rsync -a, from 1,000 to 1,000,000.

Run: ``.venv/bin/python -m bench.scale`` (prints one JSON object, writes
``bench/results/scale.json`` and ``scale.png``). ``--sizes 1000,10000`` for a quick run.

For each size N, a folder of N files of ~20-40 bytes (1,000 a folder) and, staged from a
folder shared tier, an artifact of the same files. Every tool runs as its own process (the
same clock for all: process start to exit), its peak RSS measured by ``wait4``:

  folder    resolve (list + fingerprint), cold stage (``mlstage stage DIR``, empty cache),
            warm re-stage (the same command, nothing changed: a listing and the hand-out
            check, one lstat a file each), ``cache verify --fast`` and ``cache verify``.
            Peers: ``cp -r`` (cold), ``rsync -a`` (cold, then again with nothing changed).
  artifact  cold and warm staging of a published artifact by id (the flows' path:
            ``pipeline.find_prepared`` + ``pipeline.stage``), warm both with the default
            hand-out check (one lstat a file against the seal) and trusting the cache
            (``MLSTAGE_HIT_CHECK=none``: no per-file work). Peer: ``cp -r`` of its data.
  sweep     the benchmark-sweep flow end to end on the folder (identity recipe, one model
            counting the files), on Prefect's ephemeral API, into a fresh cache and tier.

mlstage verifies every byte (sha256, the cache's content address); cp and rsync verify
nothing. Outputs stay on disk until the benchmark ends: on an ext4 without a journal (this
VM's), creating files right after deleting many pays for each recently deleted inode; the
JSON records the filesystem.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._measure import Timed, emit, filesystem, machine, run

RESULTS = Path(__file__).parent / "results"


def make_folder(root: Path, n: int) -> Path:
    """``n`` files of 20-40 distinct bytes, 1,000 a folder."""
    for d in range((n + 999) // 1000):
        folder = root / f"d{d:04d}"
        folder.mkdir(parents=True)
        for i in range(d * 1000, min(n, d * 1000 + 1000)):
            fd = os.open(folder / f"f{i:07d}.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, f"file {i:07d} {'x' * (i % 21)}\n".encode())
            os.close(fd)
    return root


def _probe(argv: list[str]) -> None:
    """One timed step in its own process (``python -m bench.scale probe WHAT ...``)."""
    what = argv[0]
    if what == "resolve":
        from mlstage.sources.local import FolderSource

        m = FolderSource(argv[1]).resolve()
        print(json.dumps({"entries": len(m), "version": m.fingerprint}))
    elif what == "publish":  # preprocess with the identity recipe: published and recorded
        from mlstage import pipeline
        from mlstage.settings import get_settings
        from mlstage.specs import DatasetSpec, RecipeSpec

        ws = pipeline.Workspace.from_settings(get_settings())
        spec = DatasetSpec(name="scale", uri=argv[1], recipe=RecipeSpec(name="identity"))
        prepared = pipeline.preprocess(ws, pipeline.resolve(ws, spec))
        print(json.dumps({"artifact_id": prepared.artifact.artifact_id}))
    elif what == "stage-artifact":
        from mlstage import pipeline
        from mlstage.settings import get_settings

        ws = pipeline.Workspace.from_settings(get_settings())
        ready = pipeline.stage(ws, pipeline.find_prepared(ws, argv[1]))
        print(json.dumps({"hit": ready.staged.hit, "files": ready.staged.files}))
    elif what == "sweep":  # the benchmark-sweep flow, as `python flow.py` runs it (no server)
        from flows.benchmark_sweep import benchmark_sweep
        from mlstage.specs import DatasetSpec, ModelSpec, RecipeSpec, SweepSpec

        sweep = SweepSpec(
            name="scale",
            datasets=[DatasetSpec(name="scale", uri=argv[1], recipe=RecipeSpec(name="identity"))],
            models=[
                ModelSpec(
                    name="count",
                    dataset="scale",
                    entrypoint="mlstage.testing.workloads:count_files",
                )
            ],
        )
        (row,) = benchmark_sweep(sweep)
        print(json.dumps({"status": row["status"], "files": row["score"]}))
    else:
        sys.exit(f"unknown probe {what}")


def _py(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.scale", "probe", *args]


def _mlstage(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "mlstage"), *args]


def _count(root: Path) -> int:
    return sum(len(files) for _d, _s, files in os.walk(root))


def measure_size(n: int, work: Path, *, skip_peers: bool = False) -> dict[str, Any]:
    """Every operation at size ``n`` (folders under ``work``, kept until the caller removes it)."""
    src = make_folder(work / "src", n)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSTAGE_")}
    env["MLSTAGE_HOME"] = str(work / "home")
    rows: dict[str, Timed] = {}

    def step(
        name: str, cmd: list[str], *, check_files: Path | None = None, hit_check: str = "seal"
    ) -> None:
        t = run(cmd, env={**env, "MLSTAGE_HIT_CHECK": hit_check})
        if check_files is not None and _count(check_files) != n:
            raise RuntimeError(f"{name}: {_count(check_files)} files at {check_files}, not {n}")
        rows[name] = t
        print(f"  {n:>9,} {name:<24} {t.seconds:8.2f} s {t.peak_rss_mb:7.1f} MB", file=sys.stderr)

    step("resolve", _py("resolve", str(src)))
    step("mlstage_cold", _mlstage("stage", str(src), "--json"))
    staged = Path(json.loads(rows["mlstage_cold"].stdout)["path"])
    if _count(staged) != n:
        raise RuntimeError(f"mlstage staged {_count(staged)} files, not {n}")
    step("mlstage_warm", _mlstage("stage", str(src), "--json"))
    assert json.loads(rows["mlstage_warm"].stdout)["hit"] is True
    step("verify_fast", _mlstage("cache", "verify", "--fast", "--json"))
    step("verify_full", _mlstage("cache", "verify", "--json"))
    if not skip_peers:
        step("cp_r", ["cp", "-r", str(src), str(work / "cp")], check_files=work / "cp")
        step(
            "rsync_cold",
            ["rsync", "-a", f"{src}/", f"{work / 'rsync'}/"],
            check_files=work / "rsync",
        )
        step("rsync_warm", ["rsync", "-a", f"{src}/", f"{work / 'rsync'}/"])

    # the same files as a shared-tier artifact, staged by id into a fresh cache
    shared = work / "shared"
    env["MLSTAGE_SHARED"] = str(shared)
    env["MLSTAGE_CACHE_DIR"] = str(work / "cache-publish")
    artifact_id = json.loads(run(_py("publish", str(src)), env=env).stdout)["artifact_id"]
    env["MLSTAGE_CACHE_DIR"] = str(work / "cache-artifact")
    step("artifact_cold", _py("stage-artifact", artifact_id))
    step("artifact_warm", _py("stage-artifact", artifact_id))
    # the same, trusting the cache (MLSTAGE_HIT_CHECK=none: no lstat of every file against
    # the seal): what a hit costs when jobs get the cache read-only
    step("artifact_warm_trusted", _py("stage-artifact", artifact_id), hit_check="none")
    if not skip_peers:
        data = shared / "artifacts" / artifact_id / "data"
        step("artifact_cp_r", ["cp", "-r", str(data), str(work / "cp-artifact")])

    # end to end through the benchmark-sweep flow: resolve, preprocess (identity recipe),
    # publish, stage, one model counting the files, record; Prefect's ephemeral API included
    env["MLSTAGE_SHARED"] = str(work / "shared-sweep")
    env["MLSTAGE_CACHE_DIR"] = str(work / "cache-sweep")
    env["PREFECT_HOME"] = str(work / "prefect")
    step("sweep_flow", _py("sweep", str(src)))
    swept = json.loads(rows["sweep_flow"].stdout.strip().splitlines()[-1])
    if swept != {"status": "completed", "files": n}:
        raise RuntimeError(f"the sweep flow's model saw {swept}, not {n} files")

    out: dict[str, Any] = {"files": n}
    out.update({k: v.row() for k, v in rows.items()})
    mc, cp = rows["mlstage_cold"].seconds, rows.get("cp_r")
    if cp is not None:
        out["cold_vs_cp_r"] = round(mc / cp.seconds, 2)
        out["cold_vs_rsync"] = round(mc / rows["rsync_cold"].seconds, 2)
        out["warm_vs_rsync_warm"] = round(
            rows["mlstage_warm"].seconds / rows["rsync_warm"].seconds, 2
        )
    out["warm_us_per_file"] = round(rows["mlstage_warm"].seconds / n * 1e6, 1)
    out["cold_us_per_file"] = round(mc / n * 1e6, 1)
    return out


def chart(result: dict[str, Any], path: Path) -> None:
    """Seconds and peak RSS against files, log-log, a line per tool and operation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["sizes"]
    files = [s["files"] for s in sizes]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8))
    lines = [
        ("mlstage_cold", "mlstage stage (cold)", "-", "C0"),
        ("cp_r", "cp -r", "--", "C1"),
        ("rsync_cold", "rsync -a (cold)", ":", "C2"),
        ("mlstage_warm", "mlstage stage (warm)", "-", "C3"),
        ("rsync_warm", "rsync -a (nothing changed)", ":", "C4"),
        ("verify_fast", "mlstage cache verify --fast", "-.", "C5"),
        ("verify_full", "mlstage cache verify (full: hashes)", "-.", "C9"),
        ("artifact_cold", "mlstage artifact by id (cold)", "-", "C6"),
        ("artifact_warm", "mlstage artifact by id (warm)", "-", "C7"),
        ("artifact_warm_trusted", "... warm, MLSTAGE_HIT_CHECK=none", ":", "C7"),
        ("artifact_cp_r", "cp -r of the artifact's files", "--", "C6"),
        ("sweep_flow", "benchmark-sweep flow, end to end", "-", "C8"),
    ]
    for key, label, style, color in lines:
        xs = [f for f, s in zip(files, sizes, strict=True) if key in s]
        if not xs:
            continue
        ax_t.plot(
            xs,
            [s[key]["seconds"] for s in sizes if key in s],
            style,
            color=color,
            marker="o",
            label=label,
        )
        ax_m.plot(
            xs,
            [s[key]["peak_rss_mb"] for s in sizes if key in s],
            style,
            color=color,
            marker="o",
            label=label,
        )
    ax_t.set(xscale="log", yscale="log", xlabel="files", ylabel="seconds (process start to exit)")
    ax_t.set_title("time")
    ax_m.set(xscale="log", xlabel="files", ylabel="peak RSS (MB)")
    ax_m.axhline(150, color="grey", linewidth=0.8)
    ax_m.set_title("peak memory (goal: under 150 MB at 1M files)")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7)
    fig.suptitle(
        f"many small files, {result['machine']['cores']} cores, {result['filesystem']}"[:120],
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["probe"]:
        _probe(argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--workdir", default=None, help="where the folders go (default: a temp dir)")
    ap.add_argument("--out", default=str(RESULTS / "scale.json"))
    ap.add_argument("--skip-peers", action="store_true", help="mlstage only (a smoke run)")
    args = ap.parse_args(argv)
    base = Path(args.workdir or tempfile.mkdtemp(prefix="mlstage-scale-"))
    result: dict[str, Any] = {
        "benchmark": "scale",
        "machine": machine(),
        "filesystem": filesystem(base),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sizes": [],
    }
    try:
        for n in sorted(int(s) for s in args.sizes.split(",")):
            work = base / f"n{n}"
            work.mkdir(parents=True)
            result["sizes"].append(measure_size(n, work, skip_peers=args.skip_peers))
    finally:
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    emit(result, args.out, chart)


if __name__ == "__main__":
    main()
