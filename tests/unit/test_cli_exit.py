"""The CLI's exit: codes as before, atexit handlers and stdio flushed, no interpreter teardown."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from mlstage import cli


class _Exited(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


@pytest.fixture
def os_exit(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """os._exit raises instead of ending pytest; the list records what ran, in order."""
    ran: list[str] = []

    def fake_exit(code: int) -> None:
        ran.append("os._exit")
        raise _Exited(code)

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr(cli.atexit, "_run_exitfuncs", lambda: ran.append("atexit"))
    return ran


def test_exit_runs_atexit_then_skips_teardown(os_exit: list[str]) -> None:
    with pytest.raises(_Exited) as exited:
        cli._exit(3)
    assert exited.value.code == 3
    assert os_exit == ["atexit", "os._exit"]


def test_exit_waits_for_a_running_non_daemon_thread(os_exit: list[str]) -> None:
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        with pytest.raises(SystemExit) as exited:
            cli._exit(4)
    finally:
        release.set()
        worker.join()
    assert exited.value.code == 4
    assert os_exit == []  # the normal exit: the interpreter joins the thread first


def test_an_interrupted_exit_does_not_wait_for_blocked_threads(
    os_exit: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After SIGTERM or Ctrl-C, a worker blocked in a read of a silent endpoint would hold a
    normal exit for the read timeout: the exit skips it (before: ~50 s to exit)."""
    interrupted = threading.Event()
    interrupted.set()
    monkeypatch.setattr(cli, "_interrupted", interrupted)
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        with pytest.raises(_Exited) as exited:
            cli._exit(143)
    finally:
        release.set()
        worker.join()
    assert exited.value.code == 143
    assert os_exit == ["atexit", "os._exit"]


@pytest.mark.parametrize(
    ("argv", "code", "stderr"),
    [
        (["stage"], 2, "Missing argument"),  # a usage error
        (["stage", "nope://x"], 2, "mlstage: error:"),  # a ConfigError
        (["stage", "/no/such/folder/anywhere"], 1, "mlstage: error:"),  # an MlstageError
    ],
)
def test_run_maps_errors_to_exit_codes(
    argv: list[str],
    code: int,
    stderr: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("MLSTAGE_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["mlstage", *argv])
    assert cli._run() == code
    assert stderr in capsys.readouterr().err


def test_a_real_process_flushes_its_output_and_keeps_its_code() -> None:
    """Buffered stdout (a pipe) and an atexit handler both survive the fast exit."""
    script = textwrap.dedent(
        """
        import atexit, sys
        from mlstage import cli
        atexit.register(lambda: print("atexit ran", file=sys.stderr))
        sys.stdout.write("x" * 100_000)  # more than a buffer, less than a flush
        sys.stdout.write("end")
        cli._exit(7)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 7
    assert proc.stdout.endswith("end") and len(proc.stdout) == 100_003
    assert "atexit ran" in proc.stderr
