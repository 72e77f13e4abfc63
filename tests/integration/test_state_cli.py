"""A wrong or unreachable MLSTAGE_STATE_URL: one clear line, no piece of a secret, no
traceback; through the real ``mlstage`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlstage.testing.net import free_port

pytestmark = pytest.mark.integration


def mlstage(*args: str, state_url: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLSTAGE_HOME": str(home), "MLSTAGE_STATE_URL": state_url}
    exe = Path(sys.executable).parent / "mlstage"
    return subprocess.run(
        [str(exe), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("postgresql+psycopg://bob:hunter2@127.0.0.1:{port}/state", "bob:***@127.0.0.1"),
        ("postgres://bob:hunter2@127.0.0.1:{port}/state", "unknown database kind"),
        ("not a url at all bob:hunter2@", "not a database URL"),
    ],
)
def test_bad_state_url_is_one_line(url: str, expect: str, home: Path) -> None:
    res = mlstage("lineage", "runs", state_url=url.format(port=free_port()), home=home)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert expect in lines[0] and "hint:" in lines[0]
    assert "hunter2" not in res.stderr + res.stdout and "Traceback" not in res.stderr


PW = "Xy7pw"  # a piece of a secret that must never be printed


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        # a secret query value (libpq's sslpassword) in a URL that cannot connect
        (
            f"postgresql+psycopg://bob:{PW}@127.0.0.1:{{port}}/state?sslpassword=ssl{PW}"
            "&sslmode=disable",
            "sslpassword=***",
        ),
        # unescaped @ and / in the password: SQLAlchemy would take pieces of it for the host
        (f"postgresql+psycopg://bob:sec@ret/{PW}@127.0.0.1:{{port}}/state", "***@127.0.0.1"),
        (f"postgresql+psycopg://bob:{PW}@x@127.0.0.1:{{port}}/state", "***@127.0.0.1"),
        # malformed ports
        (f"postgresql+psycopg://bob:{PW}@127.0.0.1:notaport/state", "malformed host or port"),
        (f"postgresql+psycopg://bob:{PW}@[::1/state", "malformed host or port"),
        (f"postgresql+psycopg://bob:{PW}@127.0.0.1:70000/state", "out of range"),
    ],
)
def test_bad_state_url_never_shows_a_secret(url: str, expect: str, home: Path) -> None:
    res = mlstage("lineage", "runs", state_url=url.format(port=free_port()), home=home)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("mlstage: error: ") and "hint:" in lines[0]
    assert expect in lines[0], lines[0]
    assert PW not in res.stderr + res.stdout
