"""A re-stage claim lives as long as its owner: a worker process re-staging for longer than
the lease keeps it (renewed), and a worker killed with SIGKILL loses it one lease later.

Real worker processes run ``mlstage.restage.restage`` on the PostgreSQL state DB with a slow
recipe and a 2 s lease; this test process is the second claimer, as another machine would be.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlstage import pipeline
from mlstage.settings import get_settings
from mlstage.specs import DatasetSpec
from mlstage.state import StateStore
from mlstage.state.claims import Coordination
from mlstage.testing.postgres import check_postgres, throwaway_database

pytestmark = pytest.mark.integration
LEASE = 2.0
WORKER = """
import sys
from mlstage import pipeline
from mlstage.restage import restage
from mlstage.specs import DatasetSpec, RecipeSpec
from mlstage.watch import WatchEntry

remote, version, lease = sys.argv[1], sys.argv[2], float(sys.argv[3])
spec = DatasetSpec(name="toy", uri=remote, recipe=RecipeSpec(name="slow_recipes:slow"))
entry = WatchEntry(dataset=spec, settle_seconds=0, warm_caches=[])
result = restage(pipeline.Workspace.from_settings(), entry, version, lease_seconds=lease)
print(result.status, flush=True)
"""
RECIPE = """
import os, time
from pathlib import Path

def slow(input_dir, output_dir):
    Path(os.environ["SLOW_STARTED"]).write_text("started")
    time.sleep(float(os.environ["SLOW_SECONDS"]))
    (Path(output_dir) / "done.txt").write_text("done")
"""


@pytest.fixture
def pg_url() -> Iterator[str]:
    reason = check_postgres()
    if reason:
        pytest.skip(reason)
    with throwaway_database("mlstage_lease_") as url:
        yield url


@pytest.fixture
def setup(
    pg_url: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, str, dict[str, str]]:
    """The remote folder, its version, and the environment of a worker process."""
    remote = tmp_path / "remote"
    remote.mkdir()
    for i in range(3):
        (remote / f"s-{i}.txt").write_text(f"sample {i}")
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "slow_recipes.py").write_text(textwrap.dedent(RECIPE))
    (tmp_path / "worker.py").write_text(textwrap.dedent(WORKER))
    monkeypatch.setenv("MLSTAGE_STATE_URL", pg_url)
    ws = pipeline.Workspace.from_settings(get_settings())
    version = pipeline.resolve(ws, DatasetSpec(name="toy", uri=str(remote))).version
    ws.state.close()
    env = {
        **os.environ,
        "MLSTAGE_HOME": str(tmp_path / "worker-home"),  # another node: its own cache
        "PYTHONPATH": os.pathsep.join([str(mods), os.environ.get("PYTHONPATH", "")]),
        "SLOW_STARTED": str(tmp_path / "started"),
    }
    return remote, version, env


def start_worker(
    remote: Path, version: str, env: dict[str, str], slow_seconds: float
) -> subprocess.Popen[str]:
    worker = Path(env["SLOW_STARTED"]).parent / "worker.py"
    proc = subprocess.Popen(
        [sys.executable, str(worker), str(remote), version, str(LEASE)],
        env={**env, "SLOW_SECONDS": str(slow_seconds)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = Path(env["SLOW_STARTED"])
    deadline = time.monotonic() + 60
    while not started.exists():  # the claim is taken before the recipe starts
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the worker never started its recipe"
        time.sleep(0.05)
    return proc


def claims_while(coord: Coordination, version: str, seconds: float) -> list[bool]:
    """Try to take the claim over every 0.2 s for ``seconds``, as another machine would."""
    won, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        won.append(coord.claim("toy", version, owner="second", lease_seconds=LEASE))
        time.sleep(0.2)
    return won


def test_a_live_worker_keeps_its_claim_past_the_lease(
    pg_url: str, setup: tuple[Path, str, dict[str, str]]
) -> None:
    remote, version, env = setup
    worker = start_worker(remote, version, env, slow_seconds=3 * LEASE)
    coord = Coordination(StateStore.open(pg_url))
    won = claims_while(coord, version, 2.5 * LEASE)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    assert out.strip() == "restaged"
    assert len(won) > 10 and not any(won)  # never taken over while the worker lived
    (claim,) = coord.claims("toy")
    assert claim.status == "done" and claim.owner != "second"
    assert not coord.claim("toy", version, owner="second", lease_seconds=LEASE)  # done stays
    coord.store.close()


def test_a_killed_workers_claim_is_taken_over_after_the_lease(
    pg_url: str, setup: tuple[Path, str, dict[str, str]]
) -> None:
    remote, version, env = setup
    worker = start_worker(remote, version, env, slow_seconds=600)
    coord = Coordination(StateStore.open(pg_url))
    try:
        assert not any(claims_while(coord, version, 1.5 * LEASE))
        os.kill(worker.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        worker.wait(30)
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate()
    assert not coord.claim("toy", version, owner="second", lease_seconds=LEASE)  # lease left
    while not coord.claim("toy", version, owner="second", lease_seconds=LEASE):
        assert time.monotonic() - killed_at < LEASE + 10, "the dead worker's claim never ran out"
        time.sleep(0.2)
    (claim,) = coord.claims("toy")
    assert claim.owner == "second" and claim.status == "running"
    coord.store.close()
