"""The README's benchmark figures come from bench/: each one still runs and prints its JSON.

Tiny parameters, no timing asserted (timings are never pass/fail): a benchmark that breaks
fails here instead of on the next person who tries to reproduce a figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _bench(module: str, args: str, tmp_path: Path) -> dict[str, Any]:
    """Run ``python -m module`` with ``args`` (space-separated) in a clean environment."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLSTAGE_", "AWS_"))},
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    out = subprocess.run(
        [sys.executable, "-m", module, *args.split()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_stage_s3_benchmark_runs_every_case(tmp_path: Path) -> None:
    doc = _bench(
        "bench.stage_s3",
        "--small-count 12 --small-kb 4 --big-count 1 --big-mb 3 --cap-mb 8 --multi 5,4,3,2,1 "
        "--tools mlstage,mlstage_link,serial_boto3 --rounds 2 --no-warmup "
        f"--out {tmp_path / 'stage_s3.json'}",
        tmp_path,
    )
    cases = doc["cases"]
    assert set(cases) == {
        "a_small_objects",
        "b_large_objects",
        "c_five_clis_at_once",
        "c_five_in_one_process",
    }
    # one verified rule for every row, measured: a body corrupted in flight is noticed
    assert doc["verified"]["mlstage"]["detects_corruption"] is True
    assert set(doc["verified"]) == {"mlstage", "mlstage_link", "serial_boto3"}
    a = cases["a_small_objects"]
    assert a["mlstage"]["client_cpu_ms_per_object"] > 0
    assert a["serial_boto3"]["ratio_vs_mlstage"] > 0 and "runs_seconds" in a["serial_boto3"]
    assert len(a["serial_boto3"]["runs_seconds"]) == 1  # serial tools run once, whole
    assert len(cases["b_large_objects"]["mlstage"]["runs_seconds"]) == 2  # median of 2 rounds
    assert cases["b_large_objects"]["mlstage"]["vs_single_stream"] > 0
    assert cases["c_five_clis_at_once"]["mlstage"]["together_vs_largest_alone"] > 0
    assert "together_vs_largest_alone" in cases["c_five_in_one_process"]["mlstage_library"]
    assert (tmp_path / "stage_s3.png").stat().st_size > 0  # the chart


def test_scale_benchmark_runs_its_steps(tmp_path: Path) -> None:
    doc = _bench(
        "bench.scale",
        f"--sizes 300 --skip-peers --out {tmp_path / 'scale.json'}",
        tmp_path,
    )
    (size,) = doc["sizes"]
    steps = (
        "resolve",
        "mlstage_cold",
        "mlstage_warm",
        "verify_fast",
        "artifact_warm",
        "sweep_flow",
    )
    for step in steps:
        assert size[step]["seconds"] > 0 and size[step]["peak_rss_mb"] > 0, step
    assert (tmp_path / "scale.png").stat().st_size > 0


def test_sweep_benchmark_runs_every_way(tmp_path: Path) -> None:
    doc = _bench(
        "bench.sweep",
        "--datasets 2 --models 2 --files 6 --train-s 0 --overhead-files 40 "
        f"--overhead-repeats 1 --repeats 1 --out {tmp_path / 'sweep.json'}",
        tmp_path,
    )
    ways = {"mlstage", "clearml_pods", "obvious_prefect", "obvious_prefect_one_worker"}
    assert set(doc["time_to_last_result_s"]) == ways
    for way in ways:  # one clock: the last result final, then the call's return
        assert 0 < doc["time_to_last_result_s"][way] <= doc["returned_s"][way] + 0.5, way
    assert doc["ratio_mlstage_vs_single_alone"] > 0
    assert doc["ratio_library_threads_vs_single_alone"] > 0  # the sweep without Prefect
    assert len(doc["details"]["library_threads"]["first_step_s"]) == 4
    assert len(doc["details"]["mlstage"]["first_step_s"]) == 4  # 2 models x 2 datasets
    assert len(doc["details"]["clearml_pods"]["first_step_s"]) == 4  # one process a model
    phase = doc["data_phase"]["mlstage"]  # until the last model started: part of the run's CPU
    assert 0 < phase["seconds"] <= doc["returned_s"]["mlstage"]
    for process, cpu in phase["cpu_s"].items():
        assert 0 <= cpu <= doc["cpu_s"]["mlstage"][process], process
    unit = doc["prefect_unit_costs"]
    assert unit["server_ms_per_task_run"] > 0  # Prefect's own, per task run
    assert unit["server_ms_per_task_run_start"] > 0  # ... and the part before its code runs
    floor = doc["two_core_floor"]  # the data plane's CPU plus Prefect's, spread over 2 cores
    assert floor["prefect_cpu_s"] > 0 and floor["data_phase_s"] >= floor["data_plane_cpu_s"] / 2
    ovh = doc["overhead"]
    # preprocess (it stages on this node too) and run-model: no stage task run, none per file
    assert ovh["staging_s"] > 0 and ovh["prefect_tasks_per_model"] == 2
    # orchestration is what a run spends outside the library's verbs: never negative
    assert 0 <= ovh["overhead_to_completed_s"] <= ovh["overhead_to_return_s"]
    assert doc["overhead_vs_staging_headline"] == max(
        ovh["overhead_vs_staging"], ovh["overhead_to_return_vs_staging"]
    )
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_cache_lookup_benchmark_runs_both_parts(tmp_path: Path) -> None:
    doc = _bench(
        "bench.cache_lookup",
        f"--sizes 50,100 --lookups 20 --rounds 1 --dataset-files 120 --out {tmp_path / 'cl.json'}",
        tmp_path,
    )
    for row in doc["sizes"].values():
        assert row["mlstage"]["median_us"] > 0 and row["ratio_mlstage_vs_clearml_new"] > 0
    hit = doc["whole_dataset"]  # the hand-out checks every file, against ClearML's own check
    assert hit["files"] == 120 and hit["mlstage_handout_ms"] > 0
    assert hit["ratio_clearml_vs_mlstage_handout"] > 0
    assert (tmp_path / "cl.png").stat().st_size > 0


def test_make_bench_writes_json_and_a_report(tmp_path: Path) -> None:
    results = tmp_path / "results"
    out = subprocess.run(
        [sys.executable, "-m", "bench.all", "--quick", "--only", "watch_burst"]
        + ["--results", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads((results / "watch_burst.json").read_text())
    assert doc["machine"]["cores"] and doc["command"].startswith("python -m bench.watch_burst")
    report = (results / "report.md").read_text()
    assert "## watch_burst" in report and "ratio_restages_peer_over_mlstage" in report
    bad = subprocess.run(
        [sys.executable, "-m", "bench.all", "--only", "nope"], cwd=ROOT, capture_output=True
    )
    assert bad.returncode == 2 and b"unknown benchmark(s) nope" in bad.stderr
