"""The slow link the streaming tests and benchmark rely on really is slow (sanity bounds)."""

from __future__ import annotations

import os
import time

import pytest

from mlstage.testing.s3 import CREDENTIALS, S3Endpoint
from mlstage.testing.slow_proxy import slow_proxy

pytestmark = pytest.mark.integration


def test_latency_and_bandwidth_cap(s3_env: S3Endpoint, bucket: str) -> None:
    body = os.urandom(400_000)
    s3_env.client().put_object(Bucket=bucket, Key="a", Body=body)
    s3_env.client().put_object(Bucket=bucket, Key="b", Body=body)
    with slow_proxy(s3_env.port, latency=0.05, bandwidth=1_000_000) as link:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=link.url,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        )
        t0 = time.monotonic()
        client.head_object(Bucket=bucket, Key="a")
        head_s = time.monotonic() - t0
        t0 = time.monotonic()
        got = [client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in ("a", "b")]
        get_s = time.monotonic() - t0
    assert got == [body, body]  # bytes pass through intact
    assert head_s >= 0.1  # one round trip: 2 x latency
    assert get_s >= 0.7  # 800 kB through a 1 MB/s link
