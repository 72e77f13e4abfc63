"""Re-staging end to end: a Prefect server and a process worker started here, the S3 endpoint,
the real prefect.yaml (schedule and trigger), and the state DB the worker writes.

Changing an object makes the scheduled watch-datasets run emit mlstage.dataset.changed; the
deployment trigger starts restage-dataset, which preprocesses, publishes and stages the new
version and re-runs the stale benchmark. A burst of 100 uploads makes one restage run; an S3
event notification through `mlstage notify` does what polling does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mlstage import pipeline
from mlstage.settings import get_settings
from mlstage.specs import DatasetSpec, ModelSpec, RecipeSpec
from mlstage.state import StateStore
from mlstage.testing.prefect_server import PrefectServer, prefect_server, process_worker
from mlstage.testing.s3 import S3Endpoint

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "mlstage-process"
WATCH_INTERVAL = 4  # seconds between scheduled watch-datasets runs in this test
pytestmark = [pytest.mark.integration, pytest.mark.prefect, pytest.mark.slow]


# ---------------------------------------------------------------------------------------------
# A Prefect server of its own (its deployments and trigger must not see other tests' events)
# and a process worker, on PostgreSQL when the machine has it
# ---------------------------------------------------------------------------------------------
@dataclass
class PrefectStack:
    api_url: str
    env: dict[str, str]

    def api(self, method: str, path: str, **kw: Any) -> Any:
        r = httpx.request(method, f"{self.api_url}{path}", timeout=30, **kw)
        r.raise_for_status()
        return r.json()

    def restage_runs(self, dataset: str) -> list[dict[str, Any]]:
        dep = self.api("GET", "/deployments/name/restage-dataset/default")
        runs = self.api(
            "POST", "/flow_runs/filter", json={"deployments": {"id": {"any_": [dep["id"]]}}}
        )
        return [r for r in runs if r["parameters"].get("dataset") == dataset]

    def events(self, name: str, dataset: str, at_least: int = 1) -> list[dict[str, Any]]:
        """Events ``name`` about ``dataset``, once at least ``at_least`` were persisted."""
        deadline = time.monotonic() + 60
        while True:
            found = self._events(name, dataset)
            if len(found) >= at_least or time.monotonic() > deadline:
                return found
            time.sleep(0.5)

    def _events(self, name: str, dataset: str) -> list[dict[str, Any]]:
        body = {
            "filter": {
                "event": {"name": [name]},
                "any_resource": {"id": [f"mlstage.dataset.{dataset}"]},
                "order": "ASC",
            },
            "limit": 50,
        }
        return self.api("POST", "/events/filter", json=body)["events"]


def flow_of(deployment: dict[str, Any]) -> str:
    """The flow a prefect.yaml deployment runs (its entrypoint's function, dashed)."""
    return deployment["entrypoint"].split(":")[1].replace("_", "-")


def resume_watch(server: PrefectServer) -> None:
    """What docs/prefect.md tells a user to do once a watch list exists: resume the paused
    schedule of watch-datasets/default. Until then the deployment starts no runs."""
    (schedule,) = json.loads(
        server.cli("deployment", "schedule", "ls", "watch-datasets/default", "-o", "json").stdout
    )
    assert schedule["active"] is False
    dep = httpx.get(f"{server.api_url}/deployments/name/watch-datasets/default", timeout=30)
    runs = httpx.post(
        f"{server.api_url}/flow_runs/filter",
        json={"deployments": {"id": {"any_": [dep.json()["id"]]}}},
        timeout=30,
    ).json()
    assert runs == []  # paused: nothing scheduled, nothing ran
    server.cli("deployment", "schedule", "resume", "watch-datasets/default", schedule["id"])


def _deploy_file(tmp: Path) -> Path:
    """This repo's prefect.yaml, reduced to our deployments, with a short watch interval."""
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    mine = [d for d in doc["deployments"] if flow_of(d) in ("watch-datasets", "restage-dataset")]
    for d in mine:
        if flow_of(d) == "watch-datasets":
            d["schedules"][0]["interval"] = WATCH_INTERVAL  # still paused, as deployed
    doc["deployments"] = mine
    out = tmp / "prefect.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


@pytest.fixture(scope="module")
def prefect_stack(
    world: World,
    tmp_path_factory: pytest.TempPathFactory,
    prefect_database: Callable[[], str | None],
) -> Iterator[PrefectStack]:
    tmp = tmp_path_factory.mktemp("prefect")
    fast_services = {  # the schedule and the trigger react within seconds
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1",
    }
    worker_log = tmp / "worker.log"
    with prefect_server(
        tmp / "home", extra_env=fast_services, database_url=prefect_database()
    ) as server:
        try:
            server.cli("work-pool", "create", POOL, "--type", "process", cwd=REPO)
            server.cli(
                "deploy", "--all", "--prefect-file", str(_deploy_file(tmp)), cwd=REPO, env=world.env
            )
            time.sleep(6)  # a scheduler loop (5 s here) passes: a paused schedule makes no runs
            resume_watch(server)
            worker_env = {**world.env, "PREFECT_WORKER_PREFETCH_SECONDS": "2"}
            with process_worker(
                server, POOL, cwd=REPO, env=worker_env, create_pool=False, log=worker_log
            ):
                yield PrefectStack(server.api_url, server.env(**world.env))
        finally:
            for log in (server.log, worker_log):  # shown by pytest when a test failed
                if log.exists():
                    print(f"----- {log.name} (tail)\n{log.read_text(errors='replace')[-4000:]}")
                    if keep := os.environ.get("MLSTAGE_TEST_KEEP_LOGS"):
                        Path(keep).mkdir(parents=True, exist_ok=True)
                        (Path(keep) / log.name).write_bytes(log.read_bytes())


# ---------------------------------------------------------------------------------------------
# The watched datasets in a real bucket, with a benchmark run on each one's first version
# ---------------------------------------------------------------------------------------------
@dataclass
class World:
    endpoint: S3Endpoint
    bucket: str
    home: Path
    watchlist: Path
    env: dict[str, str]

    def store(self) -> StateStore:
        return StateStore.open(f"sqlite:///{self.home / 'state.db'}")

    def put(self, dataset: str, i: int) -> None:
        body = json.dumps({"x": [i, i % 3, 1.0], "y": i % 2}).encode()
        self.endpoint.client().put_object(
            Bucket=self.bucket, Key=f"{dataset}/sample-{i:05d}.json", Body=body
        )


MODEL = ModelSpec(
    name="logistic",
    dataset="polled",
    entrypoint="mlstage.examples:fit_and_score",
    params={"estimator": "logistic"},
)


@pytest.fixture(scope="module")
def world(s3_endpoint: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("world")
    bucket = f"mlstage-restage-{os.getpid()}"
    s3_endpoint.client().create_bucket(Bucket=bucket)
    recipe = RecipeSpec(params={"target_bytes": 4096})
    entries = [
        {"name": "polled", "settle": 1, "rerun_stale": True, "poll": True},
        {"name": "burst", "settle": 3, "rerun_stale": False, "poll": True},
        {"name": "pushed", "settle": 1, "rerun_stale": False, "poll": False},
    ]
    watchlist = tmp / "watchlist.yaml"
    watchlist.write_text(
        yaml.safe_dump(
            {
                "datasets": [
                    {
                        "dataset": DatasetSpec(
                            name=e["name"], uri=f"s3://{bucket}/{e['name']}/", recipe=recipe
                        ).model_dump(mode="json"),
                        "settle_seconds": e["settle"],
                        "rerun_stale": e["rerun_stale"],
                        "poll": e["poll"],
                    }
                    for e in entries
                ]
            }
        )
    )
    home = tmp / "mlstage-home"
    env = {
        **s3_endpoint.env(),
        "MLSTAGE_HOME": str(home),
        "MLSTAGE_WATCHLIST": str(watchlist),
    }
    w = World(s3_endpoint, bucket, home, watchlist, env)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        for k in ("MLSTAGE_STATE_URL", "MLSTAGE_SHARED", "MLSTAGE_CACHE_DIR", "AWS_PROFILE"):
            mp.delenv(k, raising=False)
        for e in entries:
            for i in range(12):
                w.put(e["name"], i)
        ws = pipeline.Workspace.from_settings(get_settings())
        from mlstage.watch import WatchList

        wl = WatchList.load(watchlist)
        for e in wl.datasets:  # version 1 of each, and a benchmark that consumed polled's
            resolved = pipeline.resolve(ws, e.dataset)
            if e.name == "polled":
                ready = pipeline.stage(ws, pipeline.preprocess(ws, resolved))
                assert pipeline.run(ws, MODEL, ready).status == "completed"
        yield w


def wait_for_restage(stack: PrefectStack, dataset: str, timeout: float = 150) -> dict[str, Any]:
    """The first restage-dataset run for ``dataset`` once it finished; fails if it failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            runs = stack.restage_runs(dataset)
        except httpx.TimeoutException:  # a slow answer from a loaded server: ask again
            continue
        done = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]
        done.sort(key=lambda r: r["created"])
        if done:
            run = done[0]
            assert run["state_type"] == "COMPLETED", run["state"]
            return run
        time.sleep(1)
    raise AssertionError(f"no restage-dataset run for {dataset} finished within {timeout} s")


def fingerprint_now(world: World, dataset: str) -> str:
    from mlstage.sources.s3 import S3Source
    from mlstage.store import StoreConfig

    src = S3Source(world.bucket, f"{dataset}/", config=StoreConfig.from_env(world.endpoint.env()))
    return src.resolve().fingerprint


def test_a_changed_object_restages_and_reruns_the_stale_benchmark(
    world: World, prefect_stack: PrefectStack
) -> None:
    store = world.store()
    (old_run,) = store.runs()
    v1 = store.versions("polled")[0].fingerprint
    world.put("polled", 100)
    v2 = fingerprint_now(world, "polled")

    run = wait_for_restage(prefect_stack, "polled")
    assert run["parameters"]["version"] == v2 and run["parameters"]["old_version"] == v1
    assert [v.fingerprint for v in store.versions("polled")] == [v1, v2]
    # re-run on v2: the benchmark is current again; its old run stays in the history view
    assert store.stale_runs("polled") == []
    assert [r.run_id for r in store.stale_runs("polled", history=True)] == [old_run.run_id]
    (rerun,) = store.runs_consuming(version=v2)
    assert rerun.model == "logistic" and rerun.status == "completed"
    assert rerun.metrics["samples"] == 13 and rerun.flow_run_id == run["id"]

    # the UI shows each step as a task run, and a table of the re-run scores
    steps = prefect_stack.api(
        "POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}
    )
    names = {s["name"].rsplit("-", 1)[0]: s["state_type"] for s in steps}
    assert names == {
        "resolve": "COMPLETED",
        "preprocess": "COMPLETED",
        "warm-caches": "COMPLETED",
        "find-stale": "COMPLETED",
        "rerun-logistic": "COMPLETED",
    }
    (table,) = prefect_stack.api(
        "POST", "/artifacts/filter", json={"artifacts": {"key": {"any_": ["stale-polled"]}}}
    )
    (row,) = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert row["rerun"] == rerun.run_id and row["rerun_status"] == "completed"
    assert row["score_now"] == rerun.metrics["score"] and row["score_before"] is not None

    (restaged,) = prefect_stack.events("mlstage.dataset.restaged", "polled")
    assert restaged["payload"]["reran"] == [rerun.run_id]
    assert restaged["payload"]["stale_runs"] == [old_run.run_id]
    changed = prefect_stack.events("mlstage.dataset.changed", "polled")
    assert [e["payload"]["version"] for e in changed] == [v2]
    stale = prefect_stack.events("mlstage.benchmark.stale", "polled")
    assert [e["payload"]["run_id"] for e in stale] == [old_run.run_id]


def test_a_burst_of_100_changes_makes_one_restage(
    world: World, prefect_stack: PrefectStack
) -> None:
    store = world.store()
    (v1,) = [v.fingerprint for v in store.versions("burst")]
    # 100 uploads spread over two watch intervals: the passes meanwhile see it moving
    pace = 2 * WATCH_INTERVAL / 100
    for i in range(100, 200):
        world.put("burst", i)
        time.sleep(pace)
    final = fingerprint_now(world, "burst")

    run = wait_for_restage(prefect_stack, "burst")
    assert run["parameters"]["version"] == final
    time.sleep(2 * WATCH_INTERVAL + 3)  # later watch passes must not announce it again
    assert len(prefect_stack.restage_runs("burst")) == 1
    assert [v.fingerprint for v in store.versions("burst")] == [v1, final]
    assert len(prefect_stack.events("mlstage.dataset.changed", "burst")) == 1


def test_an_s3_event_notification_through_mlstage_notify_restages(
    world: World, prefect_stack: PrefectStack, tmp_path: Path
) -> None:
    store = world.store()
    (v1,) = [v.fingerprint for v in store.versions("pushed")]
    world.put("pushed", 100)
    body = {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": world.bucket},
                    "object": {"key": "pushed/sample-00100.json", "size": 40},
                },
            }
        ]
    }
    (tmp_path / "event.json").write_text(json.dumps(body))
    out = subprocess.run(
        [str(BIN / "mlstage"), "notify", str(tmp_path / "event.json")],
        env=prefect_stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    v2 = fingerprint_now(world, "pushed")
    assert report["matched"] == ["pushed"] and report["events_emitted"] == 1
    assert report["changed"] == [{"dataset": "pushed", "old_version": v1, "version": v2}]

    run = wait_for_restage(prefect_stack, "pushed")
    assert run["parameters"]["version"] == v2
    assert [v.fingerprint for v in store.versions("pushed")] == [v1, v2]
    (changed,) = prefect_stack.events("mlstage.dataset.changed", "pushed")
    assert changed["payload"]["via"] == "notify"
    (restaged,) = prefect_stack.events("mlstage.dataset.restaged", "pushed")
    assert restaged["payload"]["version"] == v2
