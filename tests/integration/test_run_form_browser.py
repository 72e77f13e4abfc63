"""The benchmark-sweep run form in a real browser: `prefect server start` with its UI, the
deployment from prefect.yaml, headless Chromium on the "Custom run" page
(deployments/run_form_screenshot.py). Every parameter's and spec field's description is on
the rendered page, and the screenshot is saved."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deployments" / "run_form_screenshot.py"
pytestmark = [pytest.mark.integration, pytest.mark.prefect, pytest.mark.slow]


@pytest.mark.skipif(
    runpy.run_path(str(SCRIPT))["chromium"]() is None,
    reason="no headless Chromium here (apt-get install chromium-headless-shell)",
)
def test_the_run_form_shows_every_description(tmp_path: Path) -> None:
    png = tmp_path / "run-form.png"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(png)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["with_angle_brackets"] == []
    assert all(report["shown"].values()) and "ModelSpec.slots" in report["shown"]
    assert "shared_block" in report["shown"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
