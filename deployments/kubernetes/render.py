"""Render mlstage's Kubernetes work pool the way Prefect's Kubernetes worker does, and check it.

    python deployments/kubernetes/render.py                      # the Job of a benchmark-sweep run
    python deployments/kubernetes/render.py --gpus 1 --validate 1.33.0
    python deployments/kubernetes/render.py --manifests          # plus manifests.yaml

It applies a deployment's job variables (deployments/kubernetes/prefect.yaml: image, pull
policy; ``--gpus``) to base-job-template.json and lets prefect-kubernetes' own
``KubernetesWorkerJobConfiguration`` prepare it for a flow run, as the worker does before it
creates the Job: no cluster and no Prefect server needed. ``--validate VERSION`` checks every
manifest against that Kubernetes version's schemas (kubernetes-validate, offline).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "base-job-template.json"
MANIFESTS = HERE / "manifests.yaml"
PREFECT_YAML = HERE / "prefect.yaml"


def deployment_job_variables(image: str) -> dict[str, Any]:
    """The job variables prefect.yaml gives every Kubernetes deployment, image filled in."""
    doc = yaml.safe_load(PREFECT_YAML.read_text())
    variables = dict(doc["definitions"]["work_pool"]["job_variables"])
    variables["image"] = image  # "{{ $MLSTAGE_IMAGE }}" at deploy time
    return variables


def render_job(
    variables: dict[str, Any],
    *,
    flow: str = "benchmark-sweep",
    api_url: str = "http://prefect-server:4200/api",
) -> dict[str, Any]:
    """The Job manifest the Kubernetes worker creates for one flow run of ``flow`` with these
    job variables (over the work pool's defaults)."""
    from prefect.client.schemas.objects import Flow, FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads(TEMPLATE.read_text())
    with temporary_settings(updates={PREFECT_API_URL: api_url}):  # what the worker passes on
        config = asyncio.run(
            KubernetesWorkerJobConfiguration.from_template_and_values(template, variables)
        )
        run = FlowRun(id=uuid.uuid4(), name="rendered-example", flow_id=uuid.uuid4())
        config.prepare_for_flow_run(run, flow=Flow(id=run.flow_id, name=flow))
    return config.job_manifest


def user_manifests() -> list[dict[str, Any]]:
    """The objects manifests.yaml asks a user to apply (volume, Secret, worker and its RBAC)."""
    return [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]


# prefect-kubernetes' worker refuses a template without these two in the pod spec, where the
# Kubernetes API (fieldValidation=Warn, its default) drops them with a warning: the one
# difference strict validation may see
PREFECT_POD_SPEC_EXTRAS = ("completions", "parallelism")


def validate(manifests: list[dict[str, Any]], version: str, *, strict: bool = True) -> list[str]:
    """Every schema violation of ``manifests`` for Kubernetes ``version``, one line each.

    ``strict``: unknown fields are violations too (a misspelt key would otherwise pass), except
    the two the Prefect worker itself insists on (PREFECT_POD_SPEC_EXTRAS).
    """
    import copy

    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    problems = []
    for m in manifests:
        checked = copy.deepcopy(m)
        if checked.get("kind") == "Job":
            pod = checked["spec"]["template"]["spec"]
            for key in PREFECT_POD_SPEC_EXTRAS:
                pod.pop(key, None)
        try:
            kubernetes_validate.validate(checked, version, strict=strict)
        except ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            problems.append(f"{m.get('kind')} {where}: {exc.message}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="registry.example/mlstage:1")
    parser.add_argument("--gpus", type=int, default=0)
    parser.add_argument("--flow", default="benchmark-sweep")
    parser.add_argument("--manifests", action="store_true", help="also print manifests.yaml")
    parser.add_argument("--validate", metavar="K8S_VERSION", help="e.g. 1.33.0")
    args = parser.parse_args(argv)
    variables = {**deployment_job_variables(args.image), "gpus": args.gpus}
    docs = [render_job(variables, flow=args.flow)]
    if args.manifests:
        docs += user_manifests()
    if args.validate:
        problems = validate(docs, args.validate)
        for p in problems:
            print(f"invalid: {p}", file=sys.stderr)
        if problems:
            return 1
    print(yaml.safe_dump_all(docs, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
