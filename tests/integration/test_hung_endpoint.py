"""An endpoint that accepts connections and never answers: ``mlstage stage`` fails in seconds,
with one line; SIGTERM and Ctrl-C end a stuck run at once.

Before: no read timeout on S3 reads through the hand-written client, 60 s on httpx, and the
CLI waited for every worker thread at exit: a hung endpoint held a run for ~8 minutes, and
SIGTERM did not end it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from mlstage.testing.faults import Fault, FaultProxy, fault_proxy
from mlstage.testing.net import wait_until
from mlstage.testing.s3 import S3Endpoint

pytestmark = pytest.mark.integration

READ_TIMEOUT = 1.0  # MLSTAGE_READ_TIMEOUT for these runs (20 s by default)


class Silent(NamedTuple):
    port: int
    accepted: list[socket.socket]


@pytest.fixture
def silent() -> Iterator[Silent]:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield Silent(server.getsockname()[1], held)
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLSTAGE_", "AWS_"))}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        MLSTAGE_HOME=str(tmp_path / "home"),
        MLSTAGE_READ_TIMEOUT=str(READ_TIMEOUT),
    )
    env.update(extra)
    return env


def _stage(uri: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mlstage", "stage", uri],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, time.monotonic() - started


def test_s3_on_a_silent_endpoint_fails_within_three_timeouts(
    silent: Silent, tmp_path: Path
) -> None:
    env = _env(tmp_path, AWS_ENDPOINT_URL=f"http://127.0.0.1:{silent.port}")
    proc, took = _stage("s3://bkt/data", env)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mlstage: error: s3://bkt/data/: listing: no answer from ")
    assert "within 1 s (gave up after 3 attempts)" in lines[0]
    assert 3 * READ_TIMEOUT <= took < 3 * READ_TIMEOUT + 8  # three timeouts and start-up


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_http_shards_on_a_silent_server_fail_in_seconds(
    scheme: str, silent: Silent, tmp_path: Path
) -> None:
    """http: no answer within the read timeout, three times; https: no TLS handshake
    within the connect timeout (10 s), said at once."""
    proc, took = _stage(f"{scheme}://127.0.0.1:{silent.port}/shard-{{0..1}}.tar", _env(tmp_path))
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    if scheme == "http":
        assert "HEAD: no answer within 1 s (gave up after 3 attempts)" in line
        assert took < 3 * READ_TIMEOUT + 8
    else:
        assert "cannot connect within 10 s" in line
        assert 10 <= took < 10 + 8


def _signal_when_stuck(
    args: list[str],
    env: dict[str, str],
    stuck: Callable[[], bool],
    sig: signal.Signals,
    where: str,
) -> tuple[int, float]:
    """Start ``mlstage stage ARGS``, send ``sig`` once ``stuck()`` says it waits on the
    server; its exit code and the seconds from the signal to its exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlstage", "stage", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a suite started in the background (no job control) passes
        # SIGINT on ignored, and a process that starts with it ignored rightly keeps ignoring it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_until(stuck, timeout=60, what=f"the stage to be stuck in {where}")
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
        return code, time.monotonic() - sent
    finally:
        proc.kill()
        proc.communicate()


@pytest.fixture
def stalling(s3_env: S3Endpoint) -> Iterator[FaultProxy]:
    with fault_proxy(s3_env.url) as proxy:
        yield proxy


@pytest.mark.parametrize("stuck_in", ["listing", "transfer"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_stuck_stage_at_once(
    stuck_in: str,
    sig: signal.Signals,
    stalling: FaultProxy,
    s3_env: S3Endpoint,
    bucket: str,
    tmp_path: Path,
) -> None:
    """Worker threads blocked in reads (or the main thread in a listing) do not hold the
    exit; the default 20 s read timeout is in force."""
    client = s3_env.client()
    for i in range(8):
        client.put_object(Bucket=bucket, Key=f"d/s{i}.bin", Body=os.urandom(2048))
    client.put_object(Bucket=bucket, Key="d/big.bin", Body=os.urandom(3 * 1024 * 1024))
    # the listing, or every small object's GET (the large one's parts arrive)
    where = f"/{bucket}" if stuck_in == "listing" else f"/{bucket}/d/s"
    stalling.configure(faults=[Fault("stall", key=where)])
    env = _env(tmp_path, AWS_ENDPOINT_URL=stalling.url, MLSTAGE_PART_SIZE=str(1024 * 1024))
    del env["MLSTAGE_READ_TIMEOUT"]

    def stuck() -> bool:
        if stuck_in == "listing":
            return stalling.count("GET", f"/{bucket}") >= 1
        return sum(n for k, n in stalling.counts().items() if "/d/s" in k) >= 8

    code, took = _signal_when_stuck(
        [f"s3://{bucket}/d", "--to", str(tmp_path / "to")], env, stuck, sig, stuck_in
    )
    assert code == (130 if sig == signal.SIGINT else 128 + sig)
    assert took < 2.5, f"{took:.1f} s from {sig.name} to exit"
    assert not (tmp_path / "to").exists()  # a half-made --to folder is removed


def test_sigterm_ends_a_stage_stuck_on_a_silent_http_server_at_once(
    silent: Silent, tmp_path: Path
) -> None:
    """HTTP shards too: a stage waiting on a server that never answers (the default 20 s
    read timeout in force) exits at once on SIGTERM."""
    env = _env(tmp_path)
    del env["MLSTAGE_READ_TIMEOUT"]
    code, took = _signal_when_stuck(
        [f"http://127.0.0.1:{silent.port}/s-{{0..3}}.tar"],
        env,
        lambda: len(silent.accepted) >= 1,
        signal.SIGTERM,
        "a connection",
    )
    assert code == 128 + signal.SIGTERM
    assert took < 2.5, f"{took:.1f} s from SIGTERM to exit"
