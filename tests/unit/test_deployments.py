"""One deployment naming scheme, applied everywhere: FLOW/default on the process pool
(prefect.yaml), FLOW/k8s on Kubernetes; docs/prefect.md lists every deployment; the name a
sweep launches run-benchmark under exists."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.tasks import child_deployment
from mlstage.specs import ModelSpec

REPO = Path(__file__).resolve().parents[2]
FILES = {
    "default": REPO / "prefect.yaml",
    "k8s": REPO / "deployments" / "kubernetes" / "prefect.yaml",
}


def deployments(path: Path) -> list[str]:
    """FLOW/NAME of every deployment in a prefect.yaml (the flow: its function, dashed)."""
    doc = yaml.safe_load(path.read_text())
    return [
        f"{d['entrypoint'].split(':')[1].replace('_', '-')}/{d['name']}" for d in doc["deployments"]
    ]


@pytest.mark.parametrize("name", FILES)
def test_every_deployment_follows_the_scheme(name: str) -> None:
    found = deployments(FILES[name])
    assert found and all(d.endswith(f"/{name}") for d in found)
    assert len(set(found)) == len(found)


def test_docs_list_every_deployment() -> None:
    text = (REPO / "docs" / "prefect.md").read_text()
    missing = [d for path in FILES.values() for d in deployments(path) if f"`{d}`" not in text]
    assert missing == []


def test_a_sweep_launches_run_benchmark_under_a_deployed_name() -> None:
    model = ModelSpec(name="m", dataset="d", entrypoint="x:y", launch="deployment")
    for name, path in FILES.items():
        assert f"run-benchmark/{child_deployment(model, name)}" in deployments(path)
    assert f"run-benchmark/{child_deployment(model, None)}" in deployments(FILES["default"])


def test_prefect_version_follows_the_installed_prefect() -> None:
    """prefect.yaml's prefect-version (both files) is the Prefect mlstage requires and runs."""
    import tomllib
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.version import Version

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (req,) = [r for r in map(Requirement, project["dependencies"]) if r.name == "prefect"]
    installed = Version(version("prefect"))
    assert installed in req.specifier and installed >= Version("3.9.1")
    for path in FILES.values():
        declared = Version(str(yaml.safe_load(path.read_text())["prefect-version"]))
        assert declared in req.specifier
        assert (declared.major, declared.minor) == (installed.major, installed.minor)
