"""The whole deployed path: server, work pool, `prefect deploy --all`, a process worker, blocks,
`prefect deployment run 'benchmark-sweep/default' --param sweep=...`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from mlstage.state import StateStore
from mlstage.testing.prefect_server import PrefectServer, process_worker
from mlstage.testing.workloads import make_dataset

pytestmark = [pytest.mark.integration, pytest.mark.prefect, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
POOL = "mlstage-flows-test"  # its own pool: other tests' scheduled runs never land on this worker
MINE = ("benchmark-sweep", "run-benchmark", "preprocess-dataset", "stage-datasets")
COUNT = "mlstage.testing.workloads:count_files"
SLOTS = "mlstage-slots-deployed-test"  # the worker's capacity: one slot


def own_pool(folder: Path) -> Path:
    """prefect.yaml's deployments of these flows, aimed at this test's own work pool."""
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    config["deployments"] = [
        {**d, "work_pool": {**d["work_pool"], "name": POOL}}
        for d in config["deployments"]
        if d["entrypoint"].split(":")[1].replace("_", "-") in MINE
    ]
    assert len(config["deployments"]) == len(MINE)
    path = folder / "prefect.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def deployed(
    prefect_server_session: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PrefectServer, Path]]:
    """Deployments of prefect.yaml and a process worker whose runs share one MLSTAGE_HOME."""
    server = prefect_server_session
    home = tmp_path_factory.mktemp("deployed-home")
    server.cli("block", "register", "-m", "blocks", cwd=REPO)
    save = (
        "from blocks import SharedTierBlock; "
        f"SharedTierBlock(location={str(home / 'block-shared')!r}).save('test-shared', overwrite=True)"
    )
    subprocess.run(
        [sys.executable, "-c", save],
        cwd=REPO,
        env=server.env(),
        check=True,
    )
    server.cli("gcl", "create", SLOTS, "--limit", "1", check=False)  # as docs/prefect.md says
    worker_env = {"MLSTAGE_HOME": str(home), "MLSTAGE_SLOT_LIMIT": SLOTS}
    with process_worker(server, POOL, cwd=REPO, env=worker_env):
        server.cli("deploy", "--all", "--prefect-file", str(own_pool(home)), cwd=REPO)
        yield server, home


def deployment_run(server: PrefectServer, name: str, **params: object) -> tuple[int, str, str]:
    """`prefect deployment run NAME --param k=<json> --watch`: exit code, output, flow run id."""
    args = ["deployment", "run", name, "--watch", "--watch-interval", "1"]
    for key, value in params.items():
        args += ["--param", f"{key}={json.dumps(value)}"]
    proc = server.cli(*args, cwd=REPO, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    found = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert found, out
    return proc.returncode, out, found.group(1)


def summary_rows(server: PrefectServer, key: str) -> list[dict]:
    """The newest table artifact ``key``, as rows."""
    body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
    (found,) = httpx.post(f"{server.api_url}/artifacts/filter", json=body, timeout=10).json()
    data = found["data"]
    return json.loads(data) if isinstance(data, str) else data


def flow_run(server: PrefectServer, run_id: str) -> dict:
    return httpx.get(f"{server.api_url}/flow_runs/{run_id}", timeout=10).json()


def test_deployed_sweep_runs_each_model_and_records_what_it_consumed(
    deployed: tuple[PrefectServer, Path], tmp_path: Path
) -> None:
    server, home = deployed
    sweep = {
        "name": "deployed",
        "datasets": [
            {
                "name": "a",
                "uri": str(make_dataset(tmp_path, "a", 20)),
                "recipe": {"name": "shard", "params": {"target_bytes": 4096}},
            },
            {
                "name": "b",
                "uri": str(make_dataset(tmp_path, "b", 8)),
                "recipe": {"name": "identity"},
            },
        ],
        "models": [  # each holds the worker's one slot for a second: they take turns
            {"name": "inline-a", "dataset": "a", "entrypoint": COUNT, "slots": 1},
            {
                "name": "pod-b",
                "dataset": "b",
                "entrypoint": COUNT,
                "launch": "deployment",
                "slots": 1,
            },
        ],
    }
    for m in sweep["models"]:
        m["params"] = {"seconds": 1}
    code, out, run_id = deployment_run(
        server, "benchmark-sweep/default", sweep=sweep, shared_block="test-shared"
    )
    assert code == 0, out
    assert flow_run(server, run_id)["state"]["type"] == "COMPLETED"

    runs = {r.model: r for r in StateStore.open(f"sqlite:///{home / 'state.db'}").runs()}
    assert set(runs) == {"inline-a", "pod-b"}
    for r in runs.values():
        assert r.status == "completed" and r.artifact_id and r.version and r.cache_hit is not None
    assert runs["inline-a"].metrics["score"] > 1  # shards
    assert runs["pod-b"].metrics["score"] == 8  # identity: the raw files
    # pod-b ran as its own run-benchmark flow run, a child of the sweep
    child = flow_run(server, runs["pod-b"].flow_run_id)
    assert runs["pod-b"].flow_run_id != run_id and child["state"]["type"] == "COMPLETED"
    deployment = httpx.get(f"{server.api_url}/deployments/{child['deployment_id']}").json()
    assert deployment["name"] == "default" and child["parent_task_run_id"]
    assert runs["pod-b"].metrics["pid"] != runs["inline-a"].metrics["pid"]
    # the shared tier came from the block
    assert (home / "block-shared" / "artifacts" / runs["pod-b"].artifact_id).is_dir()
    assert not (home / "shared").exists()
    # one slot: the sweep's model and the run-benchmark run's never ran at the same time
    a, b = (runs[m].metrics for m in ("inline-a", "pod-b"))
    assert a["finished_at"] <= b["started_at"] or b["finished_at"] <= a["started_at"]
    # the summary says where each model's bytes came from, and when its data was ready
    summary = {r["model"]: r for r in summary_rows(server, "sweep-deployed-summary")}
    assert summary["inline-a"]["data_from"] == "recipe output on this node"
    assert summary["pod-b"]["data_from"] == "shared tier"  # staged by its own run
    assert summary["pod-b"]["ready_s"] is not None and summary["pod-b"]["ready_s"] > 0


def test_a_malformed_sweep_fails_with_one_line_per_problem(
    deployed: tuple[PrefectServer, Path], tmp_path: Path
) -> None:
    server, home = deployed
    sweep = {
        "name": "malformed",
        "datasets": [
            {
                "name": "a",
                "uri": str(make_dataset(tmp_path, "a", 3)),
                "recipe": {"name": "shard", "params": {"target_bytes": "huge"}},
            },
            {"name": "b", "uri": "gopher://nowhere/b"},
        ],
        "models": [
            {"name": "m1", "dataset": "a", "entrypoint": "no_such_module_xyz:train"},
            {"name": "m2", "dataset": "b", "entrypoint": COUNT},
        ],
    }
    code, out, run_id = deployment_run(server, "benchmark-sweep/default", sweep=sweep)
    assert code != 0, out
    state = flow_run(server, run_id)["state"]
    assert state["type"] == "FAILED"
    problems = [line for line in state["message"].splitlines() if line.startswith("- ")]
    assert len(problems) == 3, state["message"]
    assert "target_bytes" in state["message"] and "gopher://nowhere/b" in state["message"]
    assert "no_such_module_xyz" in state["message"]
    assert "no_such_module_xyz" in out  # --watch streams the run's logs: the CLI shows it too


def test_kubernetes_pool_mounts_the_cache_and_the_shared_tier(
    deployed: tuple[PrefectServer, Path],
) -> None:
    server, _ = deployed
    template = REPO / "deployments" / "kubernetes" / "base-job-template.json"
    server.cli(
        "work-pool", "create", "mlstage-kubernetes", "--type", "kubernetes",
        "--base-job-template", str(template), "--overwrite",
    )  # fmt: skip
    server.cli(
        "deploy", "--all", "--prefect-file", "deployments/kubernetes/prefect.yaml",
        cwd=REPO, env={"MLSTAGE_IMAGE": "registry.example/mlstage:test"},
    )  # fmt: skip
    pool = httpx.get(f"{server.api_url}/work_pools/mlstage-kubernetes", timeout=10).json()
    spec = pool["base_job_template"]["job_configuration"]["job_manifest"]["spec"]["template"]
    volumes = {v["name"]: v for v in spec["spec"]["volumes"]}
    assert volumes["mlstage-cache"]["hostPath"]["path"] == "{{ cache_host_path }}"
    assert volumes["mlstage-shared"]["persistentVolumeClaim"]["claimName"] == "{{ shared_pvc }}"
    # every pod reads MLSTAGE_STATE_URL from one Secret: the sweep's and its models' runs meet
    (container,) = spec["spec"]["containers"]
    assert container["envFrom"] == [
        {"secretRef": {"name": "{{ state_db_secret }}", "optional": True}}
    ]
    variables = pool["base_job_template"]["variables"]["properties"]
    assert variables["state_db_secret"]["default"] == "mlstage-state-db"
    assert variables["env"]["default"] == {
        "MLSTAGE_CACHE_DIR": variables["cache_mount_path"]["default"],
        "MLSTAGE_SHARED": variables["shared_mount_path"]["default"],
    }
    found = httpx.post(
        f"{server.api_url}/deployments/filter",
        json={"work_pools": {"name": {"any_": ["mlstage-kubernetes"]}}, "limit": 50, "offset": 0},
        timeout=10,
    ).json()
    assert {d["name"] for d in found} == {"k8s"} and len(found) == 4
    assert all(d["job_variables"]["image"] == "registry.example/mlstage:test" for d in found)
