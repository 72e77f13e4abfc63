"""The object-store layer without a server: configuration, error mapping, retries, listing order."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from obstore import exceptions as ox

from mlstage.errors import (
    AccessDenied,
    EndpointTimeout,
    ObjectChanged,
    ObjectNotFound,
    SourceError,
    TransientError,
    UnsafePathError,
)
from mlstage.retry import RetryPolicy
from mlstage.store import Listed, StoreConfig, map_error, walk
from mlstage.store.config import StaticCredentials
from mlstage.store.errors import RangesIgnored

URI = "s3://bkt/data/x.bin"


def _status(status: int, reason: str, code: str) -> str:
    """An obstore message as it reads for an S3 error answer (shape copied from obstore 0.12)."""
    return (
        f"Generic S3 error: Error performing GET http://127.0.0.1:9/bkt/data/x.bin in 1.2ms - "
        f'Server returned non-2xx status code: {status} {reason}: <?xml version="1.0"?>\n'
        f"<Error><Code>{code}</Code><Message>m</Message><AWSAccessKeyId>AKIDLEAK</AWSAccessKeyId>"
        f"<Region>eu-west-1</Region></Error>\n\nDebug source:\nGeneric {{ ... }}"
    )


def _kind(kind: str) -> str:
    return (
        "Generic S3 error: Error performing GET http://127.0.0.1:9/bkt/x in 20s - HTTP error: "
        f"error sending request\n\nDebug source:\n inner: Http(HttpError {{ kind: {kind}, "
        "source: reqwest::Error { kind: Request, source: ConnectionRefused } })"
    )


@pytest.mark.parametrize(
    ("exc", "kind", "said"),
    [
        (
            ox.GenericError(_status(503, "Service Unavailable", "SlowDown")),
            TransientError,
            "HTTP 503 SlowDown",
        ),
        (
            ox.GenericError(_status(500, "Internal Server Error", "InternalError")),
            TransientError,
            "HTTP 500",
        ),
        (
            ox.GenericError(_status(429, "Too Many Requests", "TooManyRequests")),
            TransientError,
            "HTTP 429",
        ),
        (
            ox.NotFoundError(_status(404, "Not Found", "NoSuchKey")),
            ObjectNotFound,
            "HTTP 404 NoSuchKey",
        ),
        (
            ox.GenericError(_status(404, "Not Found", "NoSuchBucket")),
            ObjectNotFound,
            "not found (HTTP 404 NoSuchBucket)",
        ),
        (
            ox.PermissionDeniedError(_status(403, "Forbidden", "SignatureDoesNotMatch")),
            AccessDenied,
            "HTTP 403 SignatureDoesNotMatch",
        ),
        (
            ox.GenericError(_status(403, "Forbidden", "InvalidAccessKeyId")),
            AccessDenied,
            "InvalidAccessKeyId",
        ),
        (
            ox.PreconditionError(_status(412, "Precondition Failed", "PreconditionFailed")),
            ObjectChanged,
            "changed since",
        ),
        (
            ox.GenericError(_status(301, "Moved Permanently", "PermanentRedirect")),
            AccessDenied,
            "another region",
        ),
        (
            ox.GenericError(_kind("Timeout")),
            EndpointTimeout,
            "no answer from the endpoint within 20 s",
        ),
        (ox.GenericError(_kind("Interrupted")), TransientError, "the connection was cut"),
        (
            ox.GenericError("Generic S3 error: HTTP error: request or response body error"),
            TransientError,
            "cut short",
        ),
        (
            ox.GenericError("Generic S3 error: Got invalid list response: bad XML"),
            TransientError,
            "unreadable listing page",
        ),
        (
            ox.GenericError("Generic S3 error: Received non-partial response when range requested"),
            RangesIgnored,
            "answered a ranged GET with 200",
        ),
        (
            ox.InvalidPathError(
                'Encountered object with invalid path: Path "a//b" contained empty path segment'
            ),
            UnsafePathError,
            "refusing the key 'a//b': it has an empty segment",
        ),
    ],
)
def test_obstore_errors_become_one_line_naming_the_object(
    exc: Exception, kind: type[Exception], said: str
) -> None:
    err = map_error(exc, URI, "GET", read_timeout=20)
    assert type(err) is kind
    text = str(err)
    assert text.startswith(URI) and said in text and "\n" not in text
    assert "AKIDLEAK" not in text and "127.0.0.1:9/bkt" not in text  # no body, no request


def test_a_wrong_region_says_which_one() -> None:
    exc = ox.GenericError(_status(400, "Bad Request", "AuthorizationHeaderMalformed"))
    assert "AWS_REGION=eu-west-1" in str(map_error(exc, URI, "listing"))


def test_a_refused_connection_is_final_while_listing_and_transient_mid_transfer() -> None:
    exc = ox.GenericError(_kind("Connect"))
    listing = map_error(exc, URI, "listing", where="http://127.0.0.1:9")
    assert type(listing) is SourceError and "cannot reach http://127.0.0.1:9" in str(listing)
    assert "connection refused" in str(listing)
    assert isinstance(map_error(exc, URI, "GET", connect_transient=True), TransientError)


def test_timeouts_are_retried_at_most_twice() -> None:
    calls: list[int] = []

    def silent() -> None:
        calls.append(1)
        raise EndpointTimeout("s3://b/k: GET: no answer")

    with pytest.raises(EndpointTimeout) as failed:
        RetryPolicy(attempts=8, base_seconds=0).call(silent)
    assert len(calls) == 3 and failed.value.attempts == 3

    calls.clear()

    def throttled() -> None:
        calls.append(1)
        raise TransientError("s3://b/k: GET: HTTP 503 SlowDown")

    with pytest.raises(TransientError):
        RetryPolicy(attempts=8, base_seconds=0).call(throttled)
    assert len(calls) == 8


# -- configuration ----------------------------------------------------------------------------
def test_the_environment_configures_endpoint_region_and_static_keys() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://generic:1",
        "AWS_ENDPOINT_URL_S3": "http://s3-only:2",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_REGION": "eu-central-1",
        "AWS_ACCESS_KEY_ID": "AKID",
        "AWS_SECRET_ACCESS_KEY": "sekrit-value",
        "AWS_SESSION_TOKEN": "tok-value",
        "AWS_CA_BUNDLE": "/nonexistent/ca.pem",  # unused: the endpoint is plain http
        "HTTP_PROXY": "http://proxy:3128",
        "NO_PROXY": "localhost",
    }
    config = StoreConfig.from_env(env)
    assert (config.endpoint, config.region) == ("http://s3-only:2", "eu-central-1")
    assert "sekrit-value" not in repr(config) and "tok-value" not in repr(config)
    provider = config._provider()
    assert isinstance(provider, StaticCredentials) and "sekrit" not in repr(provider)
    assert provider() == {
        "access_key_id": "AKID",
        "secret_access_key": "sekrit-value",
        "token": "tok-value",
        "expires_at": None,
    }
    options = config._client_options()
    assert options["allow_http"] and "root_certificate" not in options
    assert (options["proxy_url"], options["proxy_excludes"]) == ("http://proxy:3128", "localhost")
    assert options["connect_timeout"] == "10000ms" and options["read_timeout"] == "20000ms"
    config.open("bkt")  # obstore accepts it, without a request


def test_a_ca_bundle_is_trusted_for_https(tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_bytes(b"-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    config = StoreConfig.from_env(
        {"AWS_ENDPOINT_URL": "https://minio.lan", "AWS_CA_BUNDLE": str(pem)}
    )
    assert config._client_options()["root_certificate"] == pem.read_bytes()
    with pytest.raises(Exception, match="AWS_CA_BUNDLE=/nope"):
        StoreConfig.from_env({"AWS_CA_BUNDLE": "/nope"})._client_options()


def test_static_keys_never_import_boto3() -> None:
    """boto3's import and session cost ~0.35 s of every CLI run: keys in the environment go
    to obstore as they are."""
    code = (
        "import sys\nfrom mlstage.sources import open_source\n"
        "open_source('s3://bkt/p').store.store\nprint('boto3' in sys.modules)"
    )
    env = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "PATH": "/usr/bin"}
    env["PYTHONPATH"] = ":".join(sys.path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_a_profile_goes_through_boto3s_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "credentials"
    creds.write_text("[team]\naws_access_key_id = AKTEAM\naws_secret_access_key = team-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_PROFILE", "team")
    provider = StoreConfig.from_env()._provider()
    assert type(provider).__name__ == "Boto3CredentialProvider"
    assert provider()["access_key_id"] == "AKTEAM"


# -- listing order and fan-out ----------------------------------------------------------------
class FakeBucket:
    """Pages and one-level listings of a sorted key set, each answer after ``delay`` s."""

    def __init__(self, keys: list[str], delay: float = 0.0) -> None:
        self.keys = sorted(keys)
        self.delay = delay
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()

    def pages(self, prefix: str, **_kw: object) -> Iterator[list[Listed]]:
        below = [Listed(k, 1, "") for k in self.keys if k.startswith(prefix)]
        for i in range(0, max(len(below), 1), 1000):
            with self.lock:
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
            time.sleep(self.delay)
            with self.lock:
                self.in_flight -= 1
            if below[i : i + 1000]:
                yield below[i : i + 1000]

    def children(self, prefix: str) -> tuple[list[Listed], list[str]]:
        objects, prefixes = [], set()
        for k in self.keys:
            if k.startswith(prefix):
                rest = k[len(prefix) :]
                if "/" in rest:
                    prefixes.add(prefix + rest.split("/", 1)[0] + "/")
                else:
                    objects.append(Listed(k, 1, ""))
        return objects, sorted(prefixes)


def test_walk_fans_out_over_sub_prefixes_in_key_order() -> None:
    keys = ["p/a.txt", "p/a/1", "p/a/2", "p/a-b", "p/b/x", "p/b.txt", "p/c"]
    keys += [f"p/d{i:02d}/{j:04d}" for i in range(20) for j in range(300)]
    bucket = FakeBucket(keys, delay=0.05)
    seen: list[int] = []
    walked = [o.key for o in walk(bucket, "p/", workers=16, on_page=seen.append)]  # type: ignore[arg-type]
    assert walked == sorted(keys) and sum(seen) == len(keys)
    assert bucket.most_in_flight > 4  # sub-prefixes listed at once, not one after another


def test_walk_keeps_many_small_sub_prefixes_on_one_listing() -> None:
    """One key per sub-prefix: a listing each would cost 1,000x the requests."""
    bucket = FakeBucket([f"q/{i:05d}/only" for i in range(2500)])
    bucket.children = None  # type: ignore[assignment,method-assign] - never asked
    assert [o.key for o in walk(bucket, "q/")] == bucket.keys  # type: ignore[arg-type]


def test_walk_keeps_a_flat_prefix_on_one_listing() -> None:
    bucket = FakeBucket([f"flat/{i:05d}" for i in range(2500)])
    bucket.children = None  # type: ignore[assignment,method-assign] - never asked
    assert [o.key for o in walk(bucket, "flat/")] == bucket.keys  # type: ignore[arg-type]
