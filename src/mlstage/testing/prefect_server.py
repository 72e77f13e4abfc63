"""A real Prefect server and process workers on 127.0.0.1, for tests and benchmarks.

    with prefect_server() as server:                    # `prefect server start`, temp PREFECT_HOME
        server.cli("work-pool", "create", "pool", "--type", "process")
        with process_worker(server, "pool", cwd=repo):  # `prefect worker start --pool pool`
            server.cli("deployment", "run", "flow/name", "--watch")

Everything is started as its own process group and stopped by that id (SIGTERM, a second
SIGTERM for the worker, then SIGKILL), never by name. ``server.env()`` is the environment a
client, a worker or a Dask worker needs to talk to this server.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from mlstage.testing.net import free_port, wait_until

# Settings every child gets: no network, generous timeouts on a loaded 2-core machine.
QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    "PREFECT_UI_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "INFO",
}


def prefect_bin() -> str:
    """The ``prefect`` console script of this interpreter's environment."""
    candidate = Path(sys.executable).with_name("prefect")
    return str(candidate) if candidate.exists() else (shutil.which("prefect") or "prefect")


@dataclass(frozen=True)
class PrefectServer:
    """A running ``prefect server start``: where it listens and how to talk to it."""

    api_url: str
    port: int
    home: Path
    log: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def env(self, **overrides: str) -> dict[str, str]:
        """os.environ pointed at this server (PREFECT_API_URL, PREFECT_HOME, quiet settings)."""
        return {
            **os.environ,
            **QUIET,
            **self.extra_env,
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            **overrides,
        }

    def cli(
        self,
        *args: str,
        cwd: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 300,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``prefect --no-prompt ARGS`` against this server; RuntimeError with its output on failure."""
        proc = subprocess.run(
            [prefect_bin(), "--no-prompt", *args],
            cwd=cwd,
            env={**self.env(), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"prefect {' '.join(args)} exited with {proc.returncode}:\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        return proc

    def healthy(self) -> bool:
        import httpx

        return httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200


def stop_group(proc: subprocess.Popen[bytes], *, signals: int = 1, grace: float = 15) -> None:
    """Stop a child started with ``start_new_session=True`` and everything it started, by pgid."""
    if proc.poll() is not None:
        return
    for _ in range(signals):
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace / signals)
            break
        except subprocess.TimeoutExpired:
            continue
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@contextmanager
def prefect_server(
    home: Path | None = None,
    *,
    port: int | None = None,
    startup_timeout: float = 120,
    extra_env: Mapping[str, str] | None = None,
    database_url: str | None = None,
) -> Iterator[PrefectServer]:
    """Start ``prefect server start`` on 127.0.0.1 with its own PREFECT_HOME; stop it on exit.

    ``extra_env`` goes to the server and to every client built from ``server.env()``.
    ``database_url`` (``postgresql+asyncpg://...``) is the server's own database; without
    it the server keeps SQLite in its home, whose single writer stalls API calls for
    seconds on a loaded machine ("database is locked" in its log).
    """
    own_home = home is None
    home = Path(tempfile.mkdtemp(prefix="prefect-home-")) if home is None else home
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    server = PrefectServer(
        api_url=f"http://127.0.0.1:{port}/api",
        port=port,
        home=home,
        log=home / "server.log",
        extra_env=dict(extra_env or {}),
    )
    env = server.env(
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_UI_API_URL=server.api_url,
        **({"PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url} if database_url else {}),
    )
    env.pop("PREFECT_API_URL")
    with open(server.log, "wb") as log:
        proc = subprocess.Popen(
            [prefect_bin(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            wait_until(
                lambda: proc.poll() is None and server.healthy(),
                timeout=startup_timeout,
                what=f"prefect server on port {port}",
                interval=0.5,
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; log:\n{server.log.read_text()[-3000:]}") from exc
        yield server
    finally:
        stop_group(proc)
        if own_home:
            shutil.rmtree(home, ignore_errors=True)


@contextmanager
def process_worker(
    server: PrefectServer,
    pool: str,
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    create_pool: bool = True,
    log: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Create the process work pool (when asked) and run ``prefect worker start`` on it.

    ``env`` is added to the worker's environment and so reaches every flow run it starts.
    """
    if create_pool:
        done = server.cli("work-pool", "create", pool, "--type", "process", check=False)
        if done.returncode != 0 and "already exists" not in done.stdout + done.stderr:
            raise RuntimeError(f"cannot create work pool {pool}: {done.stdout}{done.stderr}")
    log = log or server.home / f"worker-{pool}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [prefect_bin(), "worker", "start", "--pool", pool, "--type", "process"],
            cwd=cwd,
            env={**server.env(), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_group(proc, signals=2, grace=20)


__all__ = ["PrefectServer", "prefect_bin", "prefect_server", "process_worker", "stop_group"]
