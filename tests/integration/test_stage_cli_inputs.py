"""``mlstage stage URI`` as a user runs it (a real process) on input it must refuse: one line on
stderr with a hint, a non-zero exit, no traceback, and never a secret repeated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
MLSTAGE = str(Path(sys.executable).parent / "mlstage")
SECRET = "s3cr3tV4lue"


def stage(args: list[str], home: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLSTAGE_"))}
    env.update({"MLSTAGE_HOME": str(home), "AWS_EC2_METADATA_DISABLED": "true", **extra})
    return subprocess.run(
        [MLSTAGE, "stage", *args], env=env, capture_output=True, text=True, timeout=120
    )


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """The single line a refused command printed (asserting that is all it printed)."""
    assert out.returncode != 0, out.stdout
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("mlstage: error: ") and "hint:" in lines[0], lines[0]
    assert "Traceback" not in out.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("uri", "expect"),
    [
        ("http://h/{0..30000000}.tar", "expands to 30,000,001 URLs"),
        ("http://h/{0..999}{0..999}{0..9}.tar", "expands to 10,000,000 URLs"),
        (f"clearml+s3://AKIAEXAMPLE:{SECRET}@bucket/p/ds.1", "clearml+s3://bucket/p/ds.1"),
        (f"clearml+file://user:{SECRET}@/data/ds.1", "clearml+file:///data/ds.1"),
        (f"s3://AKIAEXAMPLE:{SECRET}@bucket/data", "credentials do not belong"),
        (f"https://{SECRET}@h/s-{{0..1}}.tar", "credentials do not belong"),
        (f"https://h/s-{{0..1}}.tar#access_token={SECRET}", "fragment"),
        (f"s3://bucket/ds/?X-Amz-Signature={SECRET}", "query"),
        (f"clearml://abc123?token={SECRET}", "query"),
        ("https://[::1/x.tar", "not a valid URI"),
    ],
)
def test_refused_input_is_one_line_that_repeats_no_secret(
    tmp_path: Path, uri: str, expect: str
) -> None:
    out = stage([uri, "--json"], tmp_path / "home")
    line = one_line_error(out)
    assert out.returncode == 2  # a ConfigError: the input, not the world, is wrong
    assert expect in line
    assert SECRET not in out.stderr + out.stdout and "AKIAEXAMPLE" not in out.stderr
    assert len(line) < 600
