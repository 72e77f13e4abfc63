"""`make demo`'s job, run as a user runs it: twice, then `mlstage lineage runs`.

`make demo` installs only the `demo` extra, so the demo runs here with every package that
only `dev` brings made unimportable, as in a venv that has just `.[demo]`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.prefect]

# top-level modules of what '.[dev]' adds to '.[demo]' (postgres, dask, stream, test tools)
DEV_ONLY = {
    "torch",
    "webdataset",
    "dask",
    "distributed",
    "prefect_dask",
    "psycopg",
    "moto",
    "matplotlib",
    "pytest",
}
LEAN_DEMO = f"""
import importlib.abc, runpy, sys

class NotInDemoExtra(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {sorted(DEV_ONLY)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the demo extra)")
        return None

sys.meta_path.insert(0, NotInDemoExtra())
runpy.run_module("flows.demo", run_name="__main__", alter_sys=True)
"""


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False
    )


def test_demo_runs_end_to_end_and_second_run_is_all_hits(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MLSTAGE_HOME": str(tmp_path / "home"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "COLUMNS": "200",
    }
    env.pop("PREFECT_API_URL", None)
    first = run([sys.executable, "-c", LEAN_DEMO], env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for model in ("iris-logistic", "wine-forest", "cancer-gboost", "digits-svc", "diabetes-ridge"):
        assert model in first.stdout
    assert first.stdout.count("miss") == 5
    assert "Staged" in first.stdout

    second = run([sys.executable, "-c", LEAN_DEMO], env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count(" hit ") == 5
    assert "nothing was staged" in second.stdout

    # the closing hint works as typed, from where make demo runs, with no MLSTAGE_HOME set
    (hint,) = [ln for ln in second.stdout.splitlines() if ln.startswith("See what each run")]
    typed = hint.split(": ", 1)[1]
    bare = {k: v for k, v in env.items() if k != "MLSTAGE_HOME"}
    shown = run(["bash", "-c", typed + " --json"], bare)
    assert shown.returncode == 0 and len(json.loads(shown.stdout)) == 10, shown.stderr

    lineage = run([str(Path(sys.executable).parent / "mlstage"), "lineage", "runs", "--json"], env)
    assert lineage.returncode == 0, lineage.stderr
    rows = json.loads(lineage.stdout)
    assert len(rows) == 10
    assert {r["status"] for r in rows} == {"completed"}
    by_model: dict[str, set[str]] = {}
    for r in rows:
        by_model.setdefault(r["model"], set()).add(r["artifact_id"])
        assert r["version"] and r["source_uri"].startswith(str(tmp_path))
    # both runs of a model consumed the same artifact; the scores are real
    assert all(len(ids) == 1 for ids in by_model.values())
    digits = [r for r in rows if r["model"] == "digits-svc"]
    assert all(r["metrics"]["score"] > 0.9 and r["metrics"]["samples"] == 1797 for r in digits)


def test_make_demo_installs_the_demo_extra_without_torch() -> None:
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert not any(d.startswith(("torch", "mlstage[")) for d in extras["demo"])
    make = subprocess.run(
        ["make", "-n", "demo", "VENV=/nonexistent-venv"], cwd=REPO, capture_output=True, text=True
    )
    assert "install -q -e '.[demo]'" in make.stdout and "[dev]" not in make.stdout
