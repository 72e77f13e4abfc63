"""S3 and S3-compatible stores: ``s3://bucket/prefix``.

boto3 resolves credentials and the endpoint the standard way (AWS_ENDPOINT_URL, AWS_PROFILE,
instance roles, ...); a client may also be injected (the S3 shared-tier block builds one).
"""

from __future__ import annotations

import http.client
import os
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlparse

from mlstage.errors import (
    AccessDenied,
    ConfigError,
    MlstageError,
    ObjectNotFound,
    SourceError,
    TransientError,
)
from mlstage.manifest import Entry, Manifest
from mlstage.paths import safe_relpath
from mlstage.retry import RetryPolicy
from mlstage.sources.base import WHOLE_CHECKSUM, CorruptData, FileObjectSource, RemoteObject
from mlstage.sources.s3_get import ConnectFailed, FastGets, parse_list_page, response_checksum
from mlstage.sources.s3_memo import EndpointMemo

_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
    "502",
    "504",
    "RequestTimeTooSkewed",
}
_MISSING_CODES = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "403",
    "ExpiredToken",
    "InvalidToken",
}
_CHUNK = 1024 * 1024
_ERROR_CODE = re.compile(rb"<Code>([^<]+)</Code>")
# the bucket lives in another region than the client's: botocore's redirector handles these
_REGION_CODES = {"PermanentRedirect", "TemporaryRedirect", "AuthorizationHeaderMalformed"}
_UNSET: Any = object()


_MD5_ETAG = re.compile("[0-9a-f]{32}")


def etag_md5(etag: str | None) -> str | None:
    """``md5:<hex>`` when an S3 ETag is its object's MD5 (a single-part upload), else None."""
    return f"md5:{etag}" if etag and _MD5_ETAG.fullmatch(etag) else None


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without leading slash)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"not an S3 URI: {uri!r}", hint="write s3://bucket/prefix")
    if parsed.username or parsed.password:
        raise ConfigError(
            "credentials do not belong in an S3 URI",
            hint="use a Prefect block or the AWS environment",
        )
    if not _BUCKET.fullmatch(parsed.netloc):
        raise ConfigError(
            f"{uri}: {parsed.netloc!r} is not a bucket name",
            hint="bucket names are letters, digits, '.', '-' and '_' (AWS: 3-63 lowercase)",
        )
    return parsed.netloc, parsed.path.lstrip("/")


# what botocore itself accepts (S3-compatible stores allow more than AWS's rules)
_BUCKET = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")


def make_client(*, pool: int = 64, **kwargs: Any) -> Any:
    """A thread-safe boto3 S3 client with ``pool`` connections, for concurrent transfers.

    Endpoint, region, profile and credentials come from the standard AWS environment
    (AWS_ENDPOINT_URL, AWS_PROFILE, ...) unless given in ``kwargs``.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        max_pool_connections=max(pool, 10),
        retries={"max_attempts": 1, "mode": "standard"},  # mlstage retries itself, with jitter
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.session.Session().client("s3", config=config, **kwargs)


def error_code(body: bytes | None, status: int) -> str:
    """The ``<Code>`` of an S3 error response body, else the HTTP status as text."""
    m = _ERROR_CODE.search(body or b"")
    return m.group(1).decode() if m else str(status)


def map_status(
    code: str, status: int | str | None, uri: str, what: str, *, detail: str = ""
) -> Exception:
    """An S3 error response (its ``<Code>`` and HTTP status) -> the mlstage error, with a hint."""
    status = str(status or "")
    if code in _MISSING_CODES or status == "404":
        return ObjectNotFound(
            f"{uri}: {what} not found ({code or status})", hint="check the bucket and prefix"
        )
    if code == "PreconditionFailed" or status == "412":
        return SourceError(
            f"{uri}: the object changed since the dataset was resolved",
            hint="re-resolve the dataset and stage the new version",
        )
    if code in _DENIED_CODES or status == "403":
        return AccessDenied(
            f"{uri}: access denied ({code})",
            hint="check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, or the block)",
        )
    if code in _TRANSIENT_CODES or status.startswith("5"):
        return TransientError(f"{uri}: {what}: {code or status}")
    return SourceError(f"{uri}: {what} failed: {code or status} {detail}".rstrip())


def map_client_error(
    exc: Exception, uri: str, what: str, *, transient_connect: bool = False
) -> Exception:
    """botocore errors -> mlstage errors naming ``uri`` and a hint.

    ``transient_connect``: a refused connection is worth a retry (mid-transfer, after the
    endpoint answered the listing); when resolving it means a wrong endpoint, said at once.
    """
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        FlexibleChecksumError,
        IncompleteReadError,
        NoCredentialsError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return map_status(code, status, uri, what, detail=str(exc))
    if isinstance(exc, FlexibleChecksumError):
        return CorruptData(f"{uri}: {what}: the body failed its checksum ({exc})")
    if isinstance(exc, ConnectTimeoutError | EndpointConnectionError) and transient_connect:
        return TransientError(f"{uri}: {what}: cannot connect ({type(exc).__name__})")
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return SourceError(
            f"{uri}: cannot reach the S3 endpoint ({exc})",
            hint="check AWS_ENDPOINT_URL and the network",
        )
    if isinstance(exc, NoCredentialsError):
        return AccessDenied(
            f"{uri}: no AWS credentials found",
            hint="set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or use a block",
        )
    if isinstance(
        exc,
        ConnectionClosedError
        | ReadTimeoutError
        | ResponseStreamingError
        | IncompleteReadError
        | Urllib3Error
        | ConnectionError
        | TimeoutError,
    ):
        return TransientError(f"{uri}: {what}: {type(exc).__name__}")
    return SourceError(f"{uri}: {what} failed: {exc}")


class _WrongRegion(Exception):
    """The fast path signed for another region than the bucket's."""


class S3Source(FileObjectSource):
    """Every object under ``s3://bucket/prefix``; keys become paths relative to the prefix.

    Single-part objects carry their MD5 (the ETag) as checksum; every GET is conditional on the
    listed ETag, so an object replaced after ``resolve`` fails loudly instead of mixing versions.
    """

    supports_ranges = True

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any | None = None,
        retry: RetryPolicy | None = None,
        memo: EndpointMemo | None = None,
    ) -> None:
        """``client``: a boto3 S3 client (default: the environment's, built on first use).

        ``memo``: where endpoints are remembered (``s3_memo``), so that a later process with
        the same AWS configuration lists and reads without building a client; only for the
        environment's client.
        """
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.uri = f"s3://{bucket}/{self.prefix}"
        self.retry = retry or RetryPolicy()
        self._client = client
        self._memo = memo if client is None else None
        self._recall = self._memo is not None  # False once a remembered endpoint was distrusted
        self._fast_gets: Any = _UNSET
        self._lock = threading.Lock()
        self.listed = 0  # objects seen by the listing in progress (a progress display reads it)

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = environment_client()
            return self._client

    @property
    def _fast(self) -> FastGets | None:
        """Signed listings and GETs without botocore's per-call CPU (``s3_get``), or None: boto3.

        None when MLSTAGE_S3_BOTO3_READS is set, the client's requests are not plain SigV4 (an
        injected fake, anonymous access, a proxy, extra headers), or the bucket turned out to
        be in another region than the client's. A remembered endpoint comes first (no client
        is built for it); it is trusted once its first listing succeeded (``_list``).
        """
        with self._lock:
            if self._fast_gets is _UNSET and self._recall and self._memo is not None:
                remembered = self._memo.recall(self.bucket)
                if remembered is not None:
                    self._fast_gets = remembered
        client = self.client if self._fast_gets is _UNSET else None
        with self._lock:
            if self._fast_gets is _UNSET:
                self._fast_gets = None
                if not os.environ.get("MLSTAGE_S3_BOTO3_READS") and hasattr(client, "meta"):
                    self._fast_gets = FastGets.for_bucket(client, self.bucket)
            return self._fast_gets

    def _distrust(self, fast: FastGets, *, failed: bool) -> None:
        """Ask botocore from now on instead of the remembered ``fast``; ``failed``: forget it
        (what botocore gives instead is remembered once a listing proved it)."""
        with self._lock:
            self._recall = False
            if self._fast_gets is fast:
                self._fast_gets = _UNSET
        if self._memo is not None and failed:
            self._memo.forget(self.bucket)

    def resolve(self) -> Manifest:
        """One paginated listing (retried when throttled); no object is read."""
        try:
            entries = self.retry.call(self._list)
        except TransientError as exc:
            raise SourceError(
                f"{exc.message} (gave up after {self.retry.attempts} attempts)",
                hint="the endpoint keeps failing; retry later",
            ) from exc
        if not entries:
            raise ObjectNotFound(
                f"{self.uri}: no objects under this prefix",
                hint="check the prefix (it is case-sensitive)",
            )
        return Manifest(source=self.uri, entries=entries)

    def _list(self) -> list[Entry]:
        self.listed = 0
        fast = self._fast
        if fast is None:
            listed: Iterable[tuple[str, int, str]] = self._list_boto3()
        elif not fast.proven:  # remembered by an earlier process: on trial
            try:
                listed = list(self._list_fast(fast))
            except Exception:  # noqa: BLE001 - whatever failed, botocore decides again
                self._distrust(fast, failed=True)
                return self._list()
            fast.proven = True
        else:
            try:
                listed = list(self._list_fast(fast))
                if self._memo is not None and not fast.remembered:
                    self._memo.remember(self.bucket, fast)  # this listing proved it
            except _WrongRegion:
                # botocore follows S3's redirect to the bucket's region and remembers it;
                # this source then reads through boto3 too (its fast path has the old region)
                with self._lock:
                    self._fast_gets = None
                self.listed = 0
                listed = self._list_boto3()
        entries: list[Entry] = []
        for key, size, etag in listed:
            rel = key[len(self.prefix) :]
            if not rel or rel.endswith("/"):
                continue  # folder markers
            etag = etag.strip('"')
            md5 = etag_md5(etag)
            entries.append(
                Entry(
                    path=safe_relpath(rel, origin=self.uri),
                    size=size,
                    checksum=md5,
                    etag=etag or None,
                    locator=rel,
                )
            )
        return entries

    def _list_fast(self, fast: FastGets) -> Iterator[tuple[str, int, str]]:
        token: str | None = None
        seen: set[str] = set()
        while True:
            try:
                status, body = fast.list_page(self.prefix, token)
            except ConnectFailed as exc:
                raise SourceError(
                    f"{self.uri}: cannot reach the S3 endpoint ({exc.strerror})",
                    hint="check AWS_ENDPOINT_URL, the network and, for https, AWS_CA_BUNDLE",
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                raise TransientError(f"{self.uri}: listing: {type(exc).__name__} {exc}") from exc
            if status != 200:
                code = error_code(body, status)
                if status in (301, 307) or code in _REGION_CODES:
                    raise _WrongRegion(code)
                raise map_status(code, status, self.uri, "listing")
            try:
                objects, token = parse_list_page(body)
            except ValueError as exc:
                raise TransientError(f"{self.uri}: listing: unreadable page ({exc})") from exc
            self.listed += len(objects)
            for o in objects:
                yield o.key, o.size, o.etag
            if token is None:
                return
            if token in seen:
                raise SourceError(
                    f"{self.uri}: the endpoint sent the same continuation token twice",
                    hint="the S3-compatible store pages its listings wrongly; set "
                    "MLSTAGE_S3_BOTO3_READS=1 to list through boto3",
                )
            seen.add(token)

    def _list_boto3(self) -> Iterator[tuple[str, int, str]]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                contents = page.get("Contents", [])
                self.listed += len(contents)
                for obj in contents:
                    yield obj["Key"], obj["Size"], obj.get("ETag", "")
        except (ClientError, BotoCoreError) as exc:
            raise map_client_error(exc, self.uri, "listing") from exc

    def read(self, obj: RemoteObject, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes [start, end) of one object, conditional on its listed ETag."""
        end = obj.size if end is None else end
        if end <= start:
            return iter(())
        key = self.prefix + obj.key
        fast = self._fast
        if fast is not None and not fast.proven:  # read before any listing tried it (a
            self._distrust(fast, failed=False)  # manifest from elsewhere): botocore decides
            fast = self._fast
        if fast is not None:
            return self._read_fast(fast, key, obj, start, end)
        return self._read_boto3(key, obj, start, end)

    def _read_fast(
        self, fast: FastGets, key: str, obj: RemoteObject, start: int, end: int
    ) -> Iterator[bytes]:
        uri = f"s3://{self.bucket}/{key}"
        headers = {}
        if obj.etag:
            headers["If-Match"] = f'"{obj.etag}"'
        ranged = start > 0 or end != obj.size
        if ranged:
            headers["Range"] = f"bytes={start}-{end - 1}"
        try:
            resp = fast.get(key, headers)
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"{uri}: GET: {type(exc).__name__}") from exc
        done = False
        try:
            if resp.status not in (200, 206) or (ranged and resp.status != 206):
                code = error_code(resp.read(), resp.status)
                raise map_status(code, resp.status, uri, "GET")
            if resp.getheader("x-amz-server-side-encryption", "").startswith(
                "aws:kms"
            ) or resp.getheader("x-amz-server-side-encryption-customer-algorithm"):
                obj.meta["etag_is_not_md5"] = "1"
            if not ranged:
                checksum = response_checksum(resp.getheader)
                if checksum:
                    obj.meta[WHOLE_CHECKSUM] = checksum
            while chunk := resp.read(_CHUNK):
                yield chunk
            done = True
        except MlstageError:
            raise  # AccessDenied and ObjectNotFound are OSErrors too
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"{uri}: GET: {type(exc).__name__}") from exc
        finally:
            fast.release(resp, reusable=done)

    def _read_boto3(self, key: str, obj: RemoteObject, start: int, end: int) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
            if obj.etag:
                kwargs["IfMatch"] = f'"{obj.etag}"'
            if start or end != obj.size:
                kwargs["Range"] = f"bytes={start}-{end - 1}"
            resp = self.client.get_object(**kwargs)
            if str(resp.get("ServerSideEncryption", "")).startswith("aws:kms") or resp.get(
                "SSECustomerAlgorithm"
            ):
                obj.meta["etag_is_not_md5"] = "1"
            body = resp["Body"]
            try:
                while chunk := body.read(_CHUNK):
                    yield chunk
            finally:
                body.close()
        except (
            ClientError,
            BotoCoreError,
            Urllib3Error,
            ConnectionError,
            TimeoutError,
        ) as exc:
            raise map_client_error(
                exc, f"s3://{self.bucket}/{key}", "GET", transient_connect=True
            ) from exc


_ENV_KEYS = (
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",  # (kept in this process's memory only, as the client keeps it)
    "AWS_SESSION_TOKEN",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
_clients: dict[tuple[str | None, ...], Any] = {}
_clients_lock = threading.Lock()


def environment_client() -> Any:
    """One client per AWS environment, shared by every source in this process.

    boto3 clients are thread-safe and cost ~0.3 s of CPU to build; five datasets staged at
    once should not build five. Made on first use (never at import), rebuilt when the AWS
    environment changes.
    """
    key = tuple(os.environ.get(k) for k in _ENV_KEYS)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = make_client(pool=128)
        return client


def from_uri(uri: str) -> S3Source:
    """The S3Source for ``s3://bucket/prefix``: the standard AWS environment's client, built
    only when no endpoint remembered in MLSTAGE_ENDPOINTS_DIR applies (``s3_memo``)."""
    from mlstage.settings import get_settings

    bucket, prefix = parse_s3_uri(uri)
    memo = EndpointMemo(get_settings().resolved_endpoints_dir)
    return S3Source(bucket, prefix, memo=memo)
