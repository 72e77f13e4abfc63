"""A real S3 endpoint over HTTP: moto's server mode in its own process on 127.0.0.1.

``python -m mlstage.testing.s3 -p PORT`` is moto's server (``python -m moto.server``) without
two costs of its own that a real S3 never charges the client's machine: a ``listdir`` of
moto's ~200 service folders plus a regex per service to route every request, under one lock,
and a log line per request. They were 40% of moto's CPU per GET (~2.6 -> ~1.5 ms for a
32 KB object here), and moto shares the machine's cores with the clients being measured.
Requests, responses and moto's behaviour are unchanged.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
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
    pid: int | None = None  # the server's process (benchmarks read its CPU time)
    kind: str = "moto"  # which server: "moto", "rclone" (its quirks: mlstage.testing.rclone)

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
        [sys.executable, "-m", "mlstage.testing.s3", "-H", "127.0.0.1", "-p", str(port)],
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


def serve(argv: list[str] | None = None) -> None:
    """Run moto's server (all services, threaded) with routing cached and request logs off."""
    p = argparse.ArgumentParser(prog="python -m mlstage.testing.s3")
    p.add_argument("-H", "--host", default="127.0.0.1")
    p.add_argument("-p", "--port", type=int, required=True)
    args = p.parse_args(argv)

    from moto import backends
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    # moto internals: a moto that renamed them still serves, only without these savings
    if hasattr(backends, "list_of_moto_modules"):
        # moto lists its package folder on every request to route it; the answer never changes
        modules = tuple(backends.list_of_moto_modules())
        backends.list_of_moto_modules = lambda: modules
    if hasattr(DomainDispatcherApplication, "get_backend_for_host"):
        # nor does the backend for a host (a pure function of the host and moto's URL patterns)
        DomainDispatcherApplication.get_backend_for_host = functools.lru_cache(maxsize=1024)(
            DomainDispatcherApplication.get_backend_for_host
        )

    class QuietHandler(MotoRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass

    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, app, threaded=True, request_handler=QuietHandler)


if __name__ == "__main__":
    serve()
