"""See the benchmark-sweep run form as a user sees it: a real `prefect server start` (UI on),
the deployment from prefect.yaml, and headless Chromium on its "Custom run" page.

    python deployments/run_form_screenshot.py [--out run-form.png] [--port 4300]

Saves a PNG of the form and prints JSON: the screenshot's path, the page's rendered text, and
which parameter descriptions the page shows (and any that contain '<', which the UI would eat).
Needs Chromium (`apt-get install chromium-headless-shell`, or set CHROMIUM=/path/to/chrome);
a Prefect server of its own is started with a temporary PREFECT_HOME and stopped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
POOL = "mlstage-run-form"
# a one-dataset, one-model sweep as the form's starting value, so the page also shows the
# dataset's, the recipe's and the model's fields (an empty list shows only "Add item")
EXAMPLE = {
    "name": "first",
    "datasets": [{"name": "iris", "uri": "s3://my-bucket/iris/", "recipe": {"name": "shard"}}],
    "models": [
        {"name": "logistic", "dataset": "iris", "entrypoint": "mlstage.examples:fit_and_score"}
    ],
}
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def chromium() -> str | None:
    """The headless browser to use: $CHROMIUM, else the first one on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((found for b in BROWSERS if (found := shutil.which(b))), None)


def browse(url: str, out: Path, *, wait_ms: int = 30000, size: str = "1280,3600") -> str:
    """Load ``url`` in headless Chromium, let its scripts run ``wait_ms`` (virtual time), save
    a screenshot to ``out``; the rendered DOM as text."""
    browser = chromium()
    if browser is None:
        raise RuntimeError("no Chromium found: apt-get install chromium-headless-shell")
    common = [
        browser,
        "--headless",
        "--no-sandbox",  # as root in a container
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={size}",
        f"--virtual-time-budget={wait_ms}",
    ]
    subprocess.run([*common, f"--screenshot={out}", url], check=True, capture_output=True)
    dom = subprocess.run([*common, "--dump-dom", url], check=True, capture_output=True, text=True)
    return dom.stdout


def deploy_sweep(server: Any) -> str:
    """Deploy prefect.yaml's benchmark-sweep on a pool of its own; its deployment id."""
    doc = yaml.safe_load((REPO / "prefect.yaml").read_text())
    doc["deployments"] = [
        {**d, "work_pool": {"name": POOL}, "parameters": {"sweep": EXAMPLE}}
        for d in doc["deployments"]
        if d["entrypoint"].endswith(":benchmark_sweep")
    ]
    folder = Path(tempfile.mkdtemp(prefix="run-form-"))
    (folder / "prefect.yaml").write_text(yaml.safe_dump(doc))
    server.cli("work-pool", "create", POOL, "--type", "process", check=False)
    server.cli("deploy", "--all", "--prefect-file", str(folder / "prefect.yaml"), cwd=REPO)
    dep = httpx.get(f"{server.api_url}/deployments/name/benchmark-sweep/default", timeout=30)
    dep.raise_for_status()
    return str(dep.json()["id"])


def descriptions(schema: dict[str, Any]) -> dict[str, str]:
    """Every parameter's and every spec field's description (``sweep``, ``ModelSpec.slots``...),
    as a page shows text (runs of whitespace as one space)."""
    found = {k: v.get("description", "") for k, v in schema.get("properties", {}).items()}
    for name, definition in schema.get("definitions", {}).items():
        for k, v in definition.get("properties", {}).items():
            found[f"{name}.{k}"] = v.get("description", "")
    return {k: " ".join(d.split()) for k, d in found.items()}


def main(argv: list[str] | None = None) -> int:
    from html.parser import HTMLParser

    from mlstage.testing.prefect_server import prefect_server

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("run-form.png"))
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    with prefect_server(port=args.port, extra_env={"PREFECT_UI_ENABLED": "true"}) as server:
        deployment_id = deploy_sweep(server)
        schema = httpx.get(f"{server.api_url}/deployments/{deployment_id}", timeout=30).json()[
            "parameter_openapi_schema"
        ]
        url = f"http://127.0.0.1:{server.port}/deployments/deployment/{deployment_id}/run"
        dom = browse(url, args.out)

    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []

        def handle_data(self, data: str) -> None:
            if data.strip():
                self.parts.append(" ".join(data.split()))

    text = Text()
    text.feed(dom)
    page = " ".join(text.parts)
    wanted = descriptions(schema)
    report = {
        "screenshot": str(args.out.resolve()),
        "url": url,
        # compared without whitespace: the UI renders descriptions as Markdown, and a URL in
        # one becomes a link (its own element, so the text around it gains a space)
        "shown": {p: "".join(d.split()) in "".join(page.split()) for p, d in wanted.items()},
        "with_angle_brackets": [p for p, d in wanted.items() if "<" in d],
        "page_text": page,
    }
    print(json.dumps(report, indent=2))
    return 0 if all(report["shown"].values()) and not report["with_angle_brackets"] else 1


if __name__ == "__main__":
    sys.exit(main())
