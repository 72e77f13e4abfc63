"""The Kubernetes work pool a user deploys: base-job-template.json rendered the way Prefect's
Kubernetes worker renders it (prefect-kubernetes' own job configuration), and manifests.yaml,
all valid against the Kubernetes schemas (kubernetes-validate, offline, strict)."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deployments" / "kubernetes"
render = runpy.run_path(str(K8S / "render.py"))
VERSIONS = ["1.30.0", "1.37.0"]  # an older cluster and the newest schemas known here


def k8s_flows() -> list[str]:
    doc = yaml.safe_load((K8S / "prefect.yaml").read_text())
    return [d["entrypoint"].split(":")[1].replace("_", "-") for d in doc["deployments"]]


def job(flow: str, gpus: int) -> dict[str, Any]:
    variables = {**render["deployment_job_variables"]("registry.example/mlstage:1"), "gpus": gpus}
    return render["render_job"](variables, flow=flow)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("flow", k8s_flows())
def test_rendered_jobs_are_valid_kubernetes(flow: str, version: str) -> None:
    for gpus in (0, 2):
        assert render["validate"]([job(flow, gpus)], version) == []


def test_the_job_mounts_the_cache_the_shared_tier_and_the_state_db_secret() -> None:
    manifest = job("run-benchmark", 2)
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert volumes["mlstage-cache"]["hostPath"]["path"] == "/var/lib/mlstage/cache"
    assert volumes["mlstage-shared"]["persistentVolumeClaim"]["claimName"] == "mlstage-shared"
    assert env["MLSTAGE_CACHE_DIR"] == mounts["mlstage-cache"]
    assert env["MLSTAGE_SHARED"] == mounts["mlstage-shared"]
    assert container["envFrom"] == [{"secretRef": {"name": "mlstage-state-db", "optional": True}}]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["image"] == "registry.example/mlstage:1"
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert env["PREFECT__FLOW_RUN_ID"] and env["PREFECT_API_URL"]


@pytest.mark.parametrize("version", VERSIONS)
def test_the_manifests_a_user_applies_are_valid_kubernetes(version: str) -> None:
    docs = render["user_manifests"]()
    assert {d["kind"] for d in docs} == {
        "PersistentVolumeClaim",
        "Secret",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
    }
    assert render["validate"](docs, version) == []
    # the names the work pool's defaults expect
    template = render["TEMPLATE"].read_text()
    for d in docs:
        if d["kind"] in ("PersistentVolumeClaim", "Secret"):
            assert f'"default": "{d["metadata"]["name"]}"' in template


def test_validation_catches_a_misspelt_key() -> None:
    broken = job("benchmark-sweep", 0)
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    (problem,) = render["validate"]([broken], VERSIONS[-1])
    assert "volumeMount" in problem
