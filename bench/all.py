"""Every benchmark, one after another: JSON and charts under bench/results/, and a report.

Run: ``make bench`` (or ``.venv/bin/python -m bench.all``). ``--quick`` shrinks every
benchmark to a few minutes in all (a check that they run, not figures to quote);
``--only scale,sweep`` runs some. Each benchmark runs in its own process, so one's memory
or threads never reach the next; each writes ``bench/results/<name>.json`` (machine facts
included) and, where it draws one, ``<name>.png``. ``bench/results/report.md`` then sums up
the headline figures of every JSON present, with the charts.

The figures are this machine's: run on a quiet machine (the JSON records the load).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._measure import machine

RESULTS = Path(__file__).parent / "results"

# name -> (arguments of the full run, of a --quick run, whether it takes --out)
BENCHMARKS: dict[str, tuple[str, str, bool]] = {
    "scale": ("", "--sizes 1000,10000", True),
    "stage_s3": (
        "--cases a,b,c,d",
        "--small-count 200 --big-count 2 --big-mb 16 --multi 60,50,40,30,20 --rounds 1",
        True,
    ),
    "sweep": ("", "--files 40 --overhead-files 500 --overhead-repeats 1 --repeats 1", True),
    "cache_lookup": ("", "--sizes 1000,10000 --lookups 500 --rounds 2 --dataset-files 10000", True),
    "streaming": ("", "--shards 4 --shard-mb 2", False),
    "state_lineage": ("", "--runs 200 --procs 4 --records 5", False),
    "watch_burst": ("", "--objects 50 --burst 60 --burst-seconds 3", False),
}


def run_one(name: str, quick: bool, results: Path) -> dict[str, Any]:
    """Run one benchmark in its own process; its JSON (written to ``results``) or why not."""
    full, small, takes_out = BENCHMARKS[name]
    out = results / f"{name}.json"
    cmd = [sys.executable, "-m", f"bench.{name}", *(small if quick else full).split()]
    if takes_out:
        cmd += ["--out", str(out)]
    shown = " ".join(["python", *cmd[1:]])
    print(f"== {name}: {shown}", file=sys.stderr, flush=True)
    started = time.monotonic()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        return {"failed": f"exit {done.returncode}", "command": shown}
    doc: dict[str, Any] = json.loads(done.stdout)
    doc.setdefault("machine", machine())
    doc.setdefault("command", shown)
    doc["wall_seconds"] = round(time.monotonic() - started, 1)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return lines


def _scale(doc: dict[str, Any]) -> list[str]:
    rows = []
    for s in doc["sizes"]:
        sec = {step: row["seconds"] for step, row in s.items() if isinstance(row, dict)}.get
        rows.append(
            [
                f"{s['files']:,}",
                sec("resolve"),
                f"{sec('mlstage_cold')} ({s['mlstage_cold']['peak_rss_mb']:.0f} MB)",
                sec("cp_r"),
                sec("rsync_cold"),
                sec("mlstage_warm"),
                sec("rsync_warm"),
                sec("artifact_warm"),
            ]
        )
    return [
        "Seconds, process start to exit; mlstage hashes every byte, cp and rsync none.",
        "",
        *_table(
            [
                "files",
                "resolve",
                "mlstage cold (peak RSS)",
                "cp -r",
                "rsync -a",
                "mlstage warm",
                "rsync -a again",
                "artifact warm",
            ],
            rows,
        ),
    ]


def _stage_s3(doc: dict[str, Any]) -> list[str]:
    lines = [
        f"Every request +{doc['latency_per_request_s'] * 1000:.0f} ms; median of "
        f"{doc['rounds']} rounds; ratio = the tool's seconds over mlstage's (above 1: mlstage "
        "is faster).",
        "",
    ]
    verified = doc.get("verified", {})
    for case in doc["cases"].values():
        rows = []
        tools = [(k, v) for k, v in case.items() if isinstance(v, dict) and "seconds" in v]
        base = next((v["seconds"] for k, v in tools if k in ("mlstage", "mlstage_library")), None)
        for tool, row in tools:
            ratio = round(row["seconds"] / base, 2) if base else None
            caught = verified.get(tool.removesuffix("_one_process"), {}).get("detects_corruption")
            rows.append([tool, row["seconds"], ratio, row.get("client_cpu_ms_per_object"), caught])
        lines += [f"**{case['title']}**", ""]
        lines += _table(
            ["tool", "seconds", "ratio", "client CPU ms/object", "detects corruption"], rows
        )
        lines.append("")
    return lines


def _sweep(doc: dict[str, Any]) -> list[str]:
    rows = [
        [way, s, doc["returned_s"][way], doc["ratio_vs_mlstage"][way]]
        for way, s in doc["time_to_last_result_s"].items()
    ]
    return [
        f"{doc['params']['datasets']} datasets x {doc['params']['models']} models; seconds to "
        "the last model's result (and to the call's return).",
        "",
        *_table(["way", "last result", "returned", "ratio vs mlstage"], rows),
        "",
        f"- mlstage against the slowest single model alone: "
        f"{doc['ratio_mlstage_vs_single_alone']}x (goal 1.2x)",
        f"- orchestration overhead against staging (the larger way of counting): "
        f"{doc['overhead_vs_staging_headline']}",
    ]


def _cache_lookup(doc: dict[str, Any]) -> list[str]:
    rows = []
    for size, row in doc["sizes"].items():
        peer = next(k for k in row if k.startswith("clearml_") and isinstance(row[k], dict))
        rows.append([size, row["mlstage"]["median_us"], row[peer]["median_us"], peer])
    lines = _table(["cached objects", "mlstage us/hit", "ClearML us/hit", "ClearML"], rows)
    hit = doc.get("whole_dataset")
    if hit:
        peer = next(k for k in hit if k.startswith("clearml_"))
        lines += [
            "",
            f"A whole cached dataset of {hit['files']:,} files handed out: mlstage "
            f"{hit['mlstage_handout_ms']} ms, ClearML's cached-dataset check {hit[peer]} ms "
            f"({hit['ratio_clearml_vs_mlstage_handout']}x).",
        ]
    return lines


def _plain(doc: dict[str, Any]) -> list[str]:
    """Top-level figures of a benchmark without a table of its own."""
    skip = {"machine", "command", "params", "config", "wall_seconds", "bench", "benchmark"}
    return ["```json", json.dumps({k: v for k, v in doc.items() if k not in skip}, indent=1), "```"]


SUMMARIES: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "scale": _scale,
    "stage_s3": _stage_s3,
    "sweep": _sweep,
    "cache_lookup": _cache_lookup,
}


def report(results: Path) -> str:
    """Markdown summing up every benchmark JSON in ``results``."""
    lines = [
        "# Benchmark report",
        "",
        "Written by `make bench` (bench/all.py) from the JSON beside it; each benchmark's own",
        "docstring says what it measures and how. Machine facts are in every JSON.",
        "",
    ]
    for name in BENCHMARKS:
        path = results / f"{name}.json"
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        facts = doc.get("machine", {})
        lines += [
            f"## {name}",
            "",
            f"`{doc.get('command', 'python -m bench.' + name)}` on {facts.get('cores')} cores, "
            f"load {facts.get('load_1m_5m_15m')} at the end.",
            "",
        ]
        if "failed" in doc:
            lines += [f"Failed: {doc['failed']}.", ""]
            continue
        lines += SUMMARIES.get(name, _plain)(doc)
        if (results / f"{name}.png").exists():
            lines += ["", f"![{name}]({name}.png)"]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a few minutes in all")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    ap.add_argument("--results", default=str(RESULTS), help="where JSON, charts and report go")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        doc = run_one(name, args.quick, results)
        if "failed" in doc:
            failed.append(name)
            (results / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (results / "report.md").write_text(report(results))
    print(f"report: {results / 'report.md'}", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
