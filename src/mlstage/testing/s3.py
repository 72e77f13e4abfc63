"""A real S3 endpoint over HTTP: moto's server mode in its own process on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mlstage.testing.net import free_port, port_open, wait_until

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    port: int

    def env(self) -> dict[str, str]:
        """Environment that points boto3 (and mlstage) at this endpoint."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.url}

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        )


@contextmanager
def moto_server(port: int | None = None) -> Iterator[S3Endpoint]:
    """Start ``moto_server`` on 127.0.0.1 in a child process; stop it by pid on exit."""
    port = port or free_port()
    env = {**os.environ, **CREDENTIALS}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_until(lambda: port_open(port), timeout=60, what=f"moto server on port {port}")
        yield S3Endpoint(f"http://127.0.0.1:{port}", port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
