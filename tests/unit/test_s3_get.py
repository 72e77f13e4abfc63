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
    ListedObject,
    SigV4Signer,
    canonical_query,
    encode_key,
    learn_template,
    parse_list_page,
    response_checksum,
)


def botocore_signature(
    creds: FrozenCredentials,
    region: str,
    host: str,
    path: str,
    headers: dict[str, str],
    params: dict[str, str] | None = None,
) -> str:
    """What botocore's own SigV4 signer (the reference) computes for this request."""
    auth = S3SigV4Auth(Credentials(creds.access_key, creds.secret_key, creds.token), "s3", region)
    names = ("x-amz-checksum-mode", "x-amz-content-sha256", "x-amz-date", "x-amz-security-token")
    request = AWSRequest(
        method="GET",
        url=f"https://{host}{path}",
        params=params or {},
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


@pytest.mark.parametrize(
    "prefix", ["", "plain/", "with space/a+b=c&d/", "ünïcödé/~x (1)/", "a%2Fb/"]
)
def test_listing_signatures_equal_botocores(prefix: str) -> None:
    creds = FrozenCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "tok+/=")
    signer = SigV4Signer("us-east-1", "s3")
    params = {"list-type": "2", "encoding-type": "url", "prefix": prefix}
    params["continuation-token"] = "1+ab/cd=="  # tokens are opaque base64: '+', '/', '='
    host, path = "127.0.0.1:9000", "/bucket"
    query = canonical_query(params)
    headers = signer.headers(
        host, path, creds, "20261121T101500Z", query=query, checksum_mode=False
    )
    assert "x-amz-checksum-mode" not in headers
    signature = headers["Authorization"].rpartition("Signature=")[2]
    assert signature == botocore_signature(creds, "us-east-1", host, path, headers, params)
    # what is sent is what is signed: the same parameters, decoded
    from urllib.parse import parse_qsl

    assert dict(parse_qsl(query, keep_blank_values=True)) == params


NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


def _page(
    contents: str, truncated: str = "false", token: str = "", ns: str = NS, encoded: bool = True
) -> bytes:
    more = f"<NextContinuationToken>{token}</NextContinuationToken>" if token else ""
    encoding = "<EncodingType>url</EncodingType>" if encoded else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult {ns}><Name>b</Name>'
        f"<Prefix>p/</Prefix><KeyCount>2</KeyCount><IsTruncated>{truncated}</IsTruncated>"
        f"{more}{contents}{encoding}</ListBucketResult>"
    ).encode()


ENTRY = (
    "<Contents><Key>{key}</Key><LastModified>2026-11-21T10:00:00.000Z</LastModified>"
    "<ETag>&quot;{etag}&quot;</ETag><Size>{size}</Size><StorageClass>STANDARD</StorageClass>"
    "</Contents>"
)


@pytest.mark.parametrize("ns", [NS, ""])  # S3-compatible stores do not all send the namespace
def test_list_pages_parse_keys_sizes_etags_and_tokens(ns: str) -> None:
    contents = ENTRY.format(key="p/with+space%20and%2Bplus/%C3%BC.bin", etag="ab" * 16, size=5)
    contents += ENTRY.format(key="p/evil/../x", etag="cd" * 16 + "-2", size=12345678901)
    objects, token = parse_list_page(_page(contents, "true", "tok/+=", ns=ns))
    assert objects == [
        ListedObject("p/with space and+plus/ü.bin", 5, f'"{"ab" * 16}"'),
        ListedObject("p/evil/../x", 12345678901, f'"{"cd" * 16}-2"'),  # S3Source refuses it
    ]
    assert token == "tok/+="
    assert parse_list_page(_page("", ns=ns)) == ([], None)


def test_keys_are_decoded_only_when_the_page_says_they_were_encoded() -> None:
    contents = ENTRY.format(key="p/a+b%41.bin", etag="ab" * 16, size=1)
    (plain,), _ = parse_list_page(_page(contents, encoded=False))  # a store ignoring the ask
    assert plain.key == "p/a+b%41.bin"
    (decoded,), _ = parse_list_page(_page(contents))
    assert decoded.key == "p/a bA.bin"


@pytest.mark.parametrize(
    "body",
    [
        b"<html>a proxy's error page</html>",
        b"not xml at all",
        _page("", "true"),  # truncated, but no token to go on with
        _page("<Contents><Key>p/x</Key></Contents>"),  # no Size
        _page("<Contents><Key>p/x</Key><Size>many</Size></Contents>"),
    ],
)
def test_unreadable_list_pages_are_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_list_page(body)


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
