"""A real S3 endpoint over HTTP: moto's server mode in its own process on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mlstage.testing.net import free_port, port_open, stop_process, wait_until

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    port: int
    pid: int | None = None  # moto's process (benchmarks read its CPU time)

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
def moto_server(port: int | None = None, *, check_signatures: bool = False) -> Iterator[S3Endpoint]:
    """Start ``moto_server`` on 127.0.0.1 in a child process; stop it by pid on exit.

    ``check_signatures``: moto authenticates every request like AWS (SigV4 signature, known
    access key, IAM policy) after the first three, which ``signing_user`` spends creating the
    only user that may sign.
    """
    port = port or free_port()
    env = {**os.environ, **CREDENTIALS}
    if check_signatures:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_until(lambda: port_open(port), timeout=60, what=f"moto server on port {port}")
        yield S3Endpoint(f"http://127.0.0.1:{port}", port, proc.pid)
    finally:
        stop_process(proc)


def signing_user(endpoint: S3Endpoint) -> dict[str, str]:
    """On a ``check_signatures`` server: an IAM user allowed s3:*, sts:* and iam:*, its credentials as env.

    Must be the first three requests the server sees (create user, attach policy, create key).
    """
    import json

    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint.url, **_client_credentials())
    iam.create_user(UserName="mlstage")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:*", "sts:*", "iam:*"], "Resource": "*"}],
    }
    iam.put_user_policy(UserName="mlstage", PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="mlstage")["AccessKey"]
    return {
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint.url,
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }


def _client_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }
