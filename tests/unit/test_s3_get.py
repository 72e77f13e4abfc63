"""The fast S3 GET path: its SigV4 signatures equal botocore's, its checksum parsing is strict."""

from __future__ import annotations

import base64
import zlib

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from mlstage.sources.s3_get import (
    FrozenCredentials,
    SigV4Signer,
    encode_key,
    learn_template,
    response_checksum,
)


def botocore_signature(
    creds: FrozenCredentials, region: str, host: str, path: str, headers: dict[str, str]
) -> str:
    """What botocore's own SigV4 signer (the reference) computes for this request."""
    auth = S3SigV4Auth(Credentials(creds.access_key, creds.secret_key, creds.token), "s3", region)
    names = ("x-amz-checksum-mode", "x-amz-content-sha256", "x-amz-date", "x-amz-security-token")
    request = AWSRequest(
        method="GET",
        url=f"https://{host}{path}",
        headers={"host": host, **{k: v for k, v in headers.items() if k in names}},
    )
    request.context["timestamp"] = headers["x-amz-date"]
    canonical = auth.canonical_request(request)
    return auth.signature(auth.string_to_sign(request, canonical), request)


@pytest.mark.parametrize(
    "key",
    ["plain.bin", "a b+c=d&e.bin", "dir/sub dir/ünïcödé ~(1).tar", "x%2Fy", "deep/" * 5 + "k"],
)
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEJr//////////wEaDA+token=="])
def test_signatures_equal_botocores(key: str, token: str | None) -> None:
    creds = FrozenCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    signer = SigV4Signer("eu-west-1", "s3")
    host, path = "bucket.s3.eu-west-1.amazonaws.com", "/" + encode_key(key)
    headers = signer.headers(host, path, creds, "20261121T101500Z")
    signature = headers["Authorization"].rpartition("Signature=")[2]
    assert signature == botocore_signature(creds, "eu-west-1", host, path, headers)
    assert headers["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261121/eu-west-1/s3/aws4_request, "
    )
    assert ("x-amz-security-token" in headers) == bool(token)
    # the cached signing key is per day: the next day signs differently, and still correctly
    next_day = signer.headers(host, path, creds, "20261122T000001Z")
    assert next_day["Authorization"].rpartition("Signature=")[2] == botocore_signature(
        creds, "eu-west-1", host, path, next_day
    )


def test_response_checksum_takes_full_object_values_only() -> None:
    crc = base64.b64encode(zlib.crc32(b"hello").to_bytes(4, "big")).decode()
    headers = {"x-amz-checksum-crc32": crc}
    assert response_checksum(headers.get) == f"crc32:{zlib.crc32(b'hello'):08x}"
    composite = {**headers, "x-amz-checksum-type": "COMPOSITE"}
    assert response_checksum(composite.get) is None
    assert response_checksum({"x-amz-checksum-crc32": "abc-3"}.get) is None  # per-part value
    assert response_checksum({"x-amz-checksum-crc32": "not base64!"}.get) is None
    assert response_checksum({"x-amz-checksum-crc64nvme": "AAAAAAAAAAA="}.get) is None
    assert response_checksum({}.get) is None


def test_no_template_for_clients_it_cannot_reproduce() -> None:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    anonymous = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        config=Config(signature_version=UNSIGNED),
    )
    assert learn_template(anonymous, "bucket") is None  # no SigV4: read through boto3
    signed = boto3.client(
        "s3",
        region_name="eu-west-1",
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="a",
        aws_secret_access_key="b",
    )
    t = learn_template(signed, "bucket")  # never sent: port 9 has nobody listening
    assert t is not None
    assert (t.scheme, t.netloc, t.path_prefix, t.region, t.service) == (
        "http",
        "127.0.0.1:9",
        "/bucket/",
        "eu-west-1",
        "s3",
    )


def test_one_fast_path_per_client_and_bucket_with_the_clients_tls_settings() -> None:
    import ssl

    import boto3

    from mlstage.sources.s3_get import FastGets

    def client(**kw: object) -> object:
        return boto3.client(
            "s3",
            region_name="us-east-1",
            endpoint_url="https://127.0.0.1:9",
            aws_access_key_id="a",
            aws_secret_access_key="b",
            **kw,
        )

    c = client()
    first = FastGets.for_bucket(c, "bucket")
    assert first is not None and FastGets.for_bucket(c, "bucket") is first
    assert FastGets.for_bucket(c, "other") is not first
    assert FastGets.for_bucket(client(), "bucket") is not first  # another client
    insecure = FastGets.for_bucket(client(verify=False), "bucket")
    assert insecure is not None and insecure._pool._ssl is not None
    assert insecure._pool._ssl.verify_mode == ssl.CERT_NONE  # as boto3 was told
    assert first._pool._ssl is not None and first._pool._ssl.verify_mode == ssl.CERT_REQUIRED
