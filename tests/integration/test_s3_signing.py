"""Signed GETs against an endpoint that checks every signature (moto with IAM auth on).

mlstage signs object GETs itself (``mlstage.sources.s3_get``); this proves the signatures are
accepted by a server that verifies them, for awkward keys, plain keys and session tokens, and
that a wrong secret or token is refused with a clear error and nothing staged.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from mlstage.cache import LocalCache
from mlstage.errors import AccessDenied
from mlstage.retry import RetryPolicy
from mlstage.sources.s3 import S3Source, make_client
from mlstage.testing.s3 import S3Endpoint, moto_server, signing_user

pytestmark = pytest.mark.integration

FAST_RETRY = RetryPolicy(attempts=3, base_seconds=0.005, max_seconds=0.05)
BUCKET = "signed-bucket"
FILES = {
    "plain.bin": b"p" * 5000,
    "with space/and+plus=eq&amp.bin": b"s" * 3000,
    "ünïcödé/~tilde (1).txt": "héllo".encode(),
    "deep/" * 6 + "leaf": b"",
    "big.bin": bytes(range(256)) * 40_000,  # 10 MB: fetched whole and as ranged parts
}


@pytest.fixture(scope="module")
def signed_s3() -> Iterator[tuple[S3Endpoint, dict[str, str]]]:
    with moto_server(check_signatures=True) as endpoint:
        env = signing_user(endpoint)
        client = _client(endpoint, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket=BUCKET)
        for key, data in FILES.items():
            client.put_object(Bucket=BUCKET, Key=f"ds/{key}", Body=data)
        yield endpoint, env


def _client(endpoint: S3Endpoint, key: str, secret: str, token: str | None = None) -> object:
    return make_client(
        endpoint_url=endpoint.url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
    )


def _assumed_role(endpoint: S3Endpoint, env: dict[str, str]) -> dict[str, str]:
    """Temporary credentials (with a session token) of a role that may read S3."""
    kw = {
        "endpoint_url": endpoint.url,
        "region_name": "us-east-1",
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
    }
    iam = boto3.client("iam", **kw)
    trust = {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}
    role = iam.create_role(
        RoleName="reader",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [trust]}),
    )["Role"]
    read = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    iam.put_role_policy(
        RoleName="reader",
        PolicyName="read",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [read]}),
    )
    c = boto3.client("sts", **kw).assume_role(RoleArn=role["Arn"], RoleSessionName="mlstage")
    return c["Credentials"]


def _stage(client: object, cache_dir: Path, part_size: int) -> dict[str, str]:
    source = S3Source(BUCKET, "ds", client=client, retry=FAST_RETRY)
    staged = LocalCache(cache_dir).stage(source, source.resolve(), part_size=part_size)
    assert source._fast is not None  # the self-signed path, not boto3, did the GETs
    return {
        p.relative_to(staged.path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in staged.path.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("part_size", [64 * 1024 * 1024, 1024 * 1024])
def test_self_signed_gets_are_accepted_for_every_key(
    signed_s3: tuple[S3Endpoint, dict[str, str]], tmp_path: Path, part_size: int
) -> None:
    endpoint, env = signed_s3
    client = _client(endpoint, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    got = _stage(client, tmp_path / "cache", part_size)
    assert got == {k: hashlib.sha256(v).hexdigest() for k, v in FILES.items()}


def test_self_signed_listing_pages_like_botocore(
    signed_s3: tuple[S3Endpoint, dict[str, str]],
) -> None:
    from mlstage.sources.s3_get import FastGets, parse_list_page

    endpoint, env = signed_s3
    client = _client(endpoint, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    fast = FastGets.for_bucket(client, BUCKET)
    assert fast is not None
    got, token, pages = [], None, 0
    while True:  # two keys a page: every page after the first carries a continuation token
        status, body = fast.list_page("ds/", token, max_keys=2)
        assert status == 200, body
        objects, token = parse_list_page(body)
        got += [(o.key, o.size, o.etag) for o in objects]
        pages += 1
        if token is None:
            break
    reference = [
        (o["Key"], o["Size"], o["ETag"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="ds/")
        for o in page["Contents"]
    ]
    assert got == reference and pages == 3
    assert {k[len("ds/") :] for k, _s, _e in got} == set(FILES)


def test_session_tokens_are_signed_and_a_wrong_secret_is_refused(
    signed_s3: tuple[S3Endpoint, dict[str, str]], tmp_path: Path
) -> None:
    endpoint, env = signed_s3
    creds = _assumed_role(endpoint, env)
    token_client = _client(
        endpoint, creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"]
    )
    assert len(_stage(token_client, tmp_path / "token", 64 * 1024 * 1024)) == len(FILES)

    listed = S3Source(BUCKET, "ds", client=token_client).resolve()  # listing as a good client
    for bad in (
        _client(endpoint, env["AWS_ACCESS_KEY_ID"], "not-the-secret"),
        _client(endpoint, creds["AccessKeyId"], creds["SecretAccessKey"], "not-the-token"),
    ):
        cache = LocalCache(tmp_path / "bad")
        source = S3Source(BUCKET, "ds", client=bad, retry=FAST_RETRY)
        with pytest.raises(AccessDenied, match=r"s3://signed-bucket/ds/.*access denied"):
            source.resolve()  # the listing is refused too
        with pytest.raises(AccessDenied, match=r"s3://signed-bucket/ds/.*access denied"):
            cache.stage(source, listed)
        assert cache.lookup(listed.fingerprint) is None


def test_a_remembered_endpoint_signs_with_the_environment_and_refuses_a_wrong_secret(
    signed_s3: tuple[S3Endpoint, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlstage.sources import s3_memo
    from mlstage.sources.s3_memo import EndpointMemo

    endpoint, env = signed_s3
    for var in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(var)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    memo = EndpointMemo(tmp_path / "endpoints")
    S3Source(BUCKET, "ds", memo=memo).resolve()  # botocore's template, remembered
    s3_memo._live.clear()

    source = S3Source(BUCKET, "ds", memo=memo, retry=FAST_RETRY)
    staged = LocalCache(tmp_path / "good").stage(source, source.resolve(), part_size=1024 * 1024)
    assert source._client is None  # every request signed from the remembered template
    got = {
        p.relative_to(staged.path).as_posix(): p.read_bytes()
        for p in staged.path.rglob("*")
        if p.is_file()
    }
    assert got == FILES

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    bad = S3Source(BUCKET, "ds", memo=memo, retry=FAST_RETRY)
    with pytest.raises(AccessDenied, match=r"s3://signed-bucket/ds/.*access denied"):
        bad.resolve()
