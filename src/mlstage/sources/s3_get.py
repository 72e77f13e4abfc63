"""Signed S3 GETs and listings without botocore's per-call machinery: the hot path.

A botocore ``get_object`` call spends ~0.5 ms of CPU on endpoint rules, event hooks and
signing, and urllib3 another ~0.3 ms; on a dataset of thousands of small objects that is most
of the client's CPU, taken from the cores the endpoint and the writes need. ``FastGets`` asks
botocore once per bucket what a GetObject request looks like (URL layout, signing region and
service, headers) by catching that request just before it would be sent, then signs further
GETs of that bucket itself (AWS Signature Version 4, header form: the same algorithm, checked
against botocore's own signer in the tests) with the client's current credentials, and sends
them over pooled keep-alive ``http.client`` connections. Listings (ListObjectsV2) go the same
way and are parsed with ElementTree: botocore's parser spends most of a listing's CPU turning
every LastModified into a datetime that staging never reads.

Anything this path does not reproduce exactly makes ``FastGets.for_bucket`` return None and
the caller reads through boto3: a request botocore would not sign with SigV4, a URL with a
query string, an extra ``x-amz-*`` header, a proxy in the environment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import os
import socket
import ssl
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_plus, urlsplit
from xml.etree import ElementTree

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_PROBE_PREFIX = ".mlstage-probe-"
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
# x-amz-* headers of botocore's GetObject that this module reproduces itself
_KNOWN_AMZ = {"x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "x-amz-checksum-mode"}
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_shared: weakref.WeakKeyDictionary[Any, dict[str, FastGets | None]] = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


def response_checksum(header: Callable[[str], str | None]) -> str | None:
    """The whole object's checksum from S3's ``x-amz-checksum-*`` response headers, '<algo>:<hex>'.

    Only full-object values (a composite multipart checksum covers parts, not the content)
    and only algorithms the standard library computes fast: CRC32, SHA-1, SHA-256.
    """
    if (header("x-amz-checksum-type") or "FULL_OBJECT").upper() != "FULL_OBJECT":
        return None
    for algo in ("crc32", "sha256", "sha1"):
        value = header(f"x-amz-checksum-{algo}")
        if value and "-" not in value:
            try:
                return f"{algo}:{base64.b64decode(value, validate=True).hex()}"
            except binascii.Error:
                return None
    return None


def encode_key(key: str) -> str:
    """An object key as it appears in the request path (botocore's encoding, '/' kept)."""
    return quote(key, safe="/~")


def canonical_query(params: dict[str, str]) -> str:
    """A query string in SigV4's canonical form (sorted, RFC 3986 encoded): sent as signed."""
    return "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items())
    )


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int
    etag: str


def parse_list_page(body: bytes) -> tuple[list[ListedObject], str | None]:
    """One ListObjectsV2 page: its objects and the continuation token (None on the last page).

    Keys are URL-decoded only when the page says it encoded them (``<EncodingType>url``), as
    botocore does: a store that ignores ``encoding-type`` sends them as they are. Raises
    ValueError on a body that is not such a page.
    """
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise ValueError(f"not XML: {exc}") from None
    if _local(root.tag) != "ListBucketResult":
        raise ValueError(f"expected ListBucketResult, got {_local(root.tag)}")
    raw: list[tuple[str, int, str]] = []
    truncated, token, encoding = False, None, ""
    for child in root:
        tag = _local(child.tag)
        if tag == "Contents":
            fields = {_local(f.tag): f.text or "" for f in child}
            try:
                raw.append((fields["Key"], int(fields["Size"]), fields.get("ETag", "")))
            except (KeyError, ValueError) as exc:
                raise ValueError(f"an entry without a usable Key and Size ({exc})") from None
        elif tag == "IsTruncated":
            truncated = (child.text or "").strip().lower() == "true"
        elif tag == "NextContinuationToken":
            token = child.text
        elif tag == "EncodingType":
            encoding = (child.text or "").strip().lower()
    if truncated and not token:
        raise ValueError("a truncated page without NextContinuationToken")
    decode = unquote_plus if encoding == "url" else str
    objects = [ListedObject(decode(key), size, etag) for key, size, etag in raw]
    return objects, token if truncated else None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


@dataclass(frozen=True)
class GetTemplate:
    """What a GetObject request of one bucket looks like, learnt from botocore once."""

    scheme: str
    netloc: str
    path_prefix: str  # the path before the encoded key: "/bucket/" or "/"
    region: str
    service: str
    user_agent: str


@dataclass(frozen=True)
class FrozenCredentials:
    access_key: str
    secret_key: str
    token: str | None = None


class SigV4Signer:
    """AWS Signature Version 4 for bodiless S3 GETs (header form), signing keys cached per day."""

    def __init__(self, region: str, service: str) -> None:
        self.region = region
        self.service = service
        self._keys: dict[tuple[str, str], bytes] = {}

    def _signing_key(self, secret: str, day: str) -> bytes:
        key = self._keys.get((secret, day))
        if key is None:
            k = hmac.new(f"AWS4{secret}".encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, self.service, "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._keys = {(secret, day): k}  # one day, one secret at a time
            key = k
        return key

    def headers(
        self,
        host: str,
        path: str,
        creds: FrozenCredentials,
        amz_date: str,
        *,
        query: str = "",
        checksum_mode: bool = True,
    ) -> dict[str, str]:
        """The headers that authenticate ``GET path?query`` on ``host`` at ``amz_date``.

        ``amz_date`` is YYYYMMDDTHHMMSSZ; ``query`` is in canonical form (``canonical_query``);
        ``checksum_mode`` asks S3 for the object's checksum (object GETs).
        """
        signed = {
            "host": host,
            "x-amz-content-sha256": _EMPTY_SHA256,
            "x-amz-date": amz_date,
        }
        if checksum_mode:
            signed["x-amz-checksum-mode"] = "ENABLED"
        if creds.token:
            signed["x-amz-security-token"] = creds.token
        names = ";".join(sorted(signed))
        canonical = "\n".join(
            [
                "GET",
                path,
                query,
                "".join(f"{k}:{signed[k]}\n" for k in sorted(signed)),
                names,
                _EMPTY_SHA256,
            ]
        )
        day = amz_date[:8]
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                amz_date,
                scope,
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        signature = hmac.new(
            self._signing_key(creds.secret_key, day), to_sign.encode(), hashlib.sha256
        ).hexdigest()
        out = {k: v for k, v in signed.items() if k != "host"}
        out["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
            f"SignedHeaders={names}, Signature={signature}"
        )
        return out


def learn_template(client: Any, bucket: str) -> GetTemplate | None:
    """How botocore would send a GetObject to ``bucket``, caught before it leaves; None if unusual.

    The probe request never reaches the network: a ``before-send`` hook (matched on a random
    probe key, so concurrent real calls on a shared client are untouched) records it and
    answers with an empty 200.
    """
    from botocore.awsrequest import AWSResponse

    probe = f"{_PROBE_PREFIX}{uuid.uuid4().hex}"
    encoded = encode_key(probe)
    seen: dict[str, Any] = {}

    def catch(request: Any, **_kwargs: Any) -> Any:
        if not urlsplit(request.url).path.endswith("/" + encoded):
            return None
        seen["url"] = request.url
        seen["headers"] = {k.lower(): _text(v) for k, v in request.headers.items()}
        seen["signing"] = dict(request.context.get("signing") or {})
        return AWSResponse(request.url, 200, {"Content-Length": "0"}, _EmptyRaw())

    events = client.meta.events
    handler_id = f"mlstage-probe-{probe}"
    events.register_first("before-send.s3.GetObject", catch, unique_id=handler_id)
    try:
        client.get_object(Bucket=bucket, Key=probe)["Body"].read()
    except Exception:  # noqa: BLE001 - any surprise means: read through boto3
        return None
    finally:
        events.unregister("before-send.s3.GetObject", unique_id=handler_id)
    if not seen:
        return None
    url = urlsplit(seen["url"])
    headers: dict[str, str] = seen["headers"]
    auth = headers.get("authorization", "")
    signing = seen["signing"]
    extra_amz = {k for k in headers if k.startswith("x-amz-")} - _KNOWN_AMZ
    if (
        not auth.startswith("AWS4-HMAC-SHA256 ")
        or url.query
        or url.scheme not in ("http", "https")
        or extra_amz
        or not url.path.endswith("/" + encoded)
        or not signing.get("region")
        or signing.get("disableDoubleEncoding") is False
    ):
        return None
    return GetTemplate(
        scheme=url.scheme,
        netloc=url.netloc,
        path_prefix=url.path[: -len(encoded)],
        region=signing["region"],
        service=signing.get("signing_name") or "s3",
        user_agent=headers.get("user-agent", "mlstage"),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _EmptyRaw:
    """The body of the probe's fake response."""

    def stream(self, *_args: Any, **_kwargs: Any) -> Iterator[bytes]:
        return iter(())

    def read(self, *_args: Any, **_kwargs: Any) -> bytes:
        return b""

    def close(self) -> None:
        pass


def tls_context(verify: bool | str) -> ssl.SSLContext:
    """TLS settings as the boto3 client has them: ``verify`` False, True, or a CA bundle path."""
    if verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    cafile = ca_bundle(verify)
    return ssl.create_default_context(cafile=cafile if isinstance(cafile, str) else None)


def ca_bundle(verify: bool | str) -> bool | str:
    """``verify`` with True replaced by the CA bundle botocore would use (when it names one)."""
    if verify is not True:
        return verify
    from botocore.httpsession import get_cert_path

    cafile = os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True)
    return cafile if isinstance(cafile, str) else True


class ConnectFailed(OSError):
    """No connection to the endpoint could be made (``reason`` says why)."""

    def __init__(self, reason: OSError) -> None:
        super().__init__(reason.errno, f"{type(reason).__name__}: {reason.strerror or reason}")
        self.reason = reason


class ConnectionPool:
    """Keep-alive ``http.client`` connections to one host, shared by the fetch threads."""

    def __init__(
        self,
        scheme: str,
        netloc: str,
        *,
        verify: bool | str = True,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        self.scheme = scheme
        self.netloc = netloc
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._ssl = tls_context(verify) if scheme == "https" else None

    def take(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was used before (it may have been closed by the server)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        if self._ssl is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.netloc, timeout=self.connect_timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(self.netloc, timeout=self.connect_timeout)
        try:
            conn.connect()
        except OSError as exc:  # refused, unreachable, DNS, connect timeout, TLS verification
            conn.close()
            raise ConnectFailed(exc) from exc
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock.settimeout(self.read_timeout)
        return conn, False

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append(conn)


class FastGets:
    """Signed GETs of one bucket's objects (see the module docstring)."""

    def __init__(
        self,
        template: GetTemplate,
        credentials: Any,
        *,
        verify: bool | str = True,
        remembered: bool = False,
    ) -> None:
        self.template = template
        self.verify = verify
        # from an earlier process's memo (s3_memo), not from botocore: trusted once ``proven``
        self.remembered = remembered
        self.proven = not remembered
        self._credentials = credentials  # botocore Credentials (refreshable or not)
        self._signer = SigV4Signer(template.region, template.service)
        self._pool = ConnectionPool(template.scheme, template.netloc, verify=verify)

    @classmethod
    def for_bucket(cls, client: Any, bucket: str) -> FastGets | None:
        """The fast path for ``bucket`` through ``client``'s endpoint and credentials, or None.

        One per client and bucket, shared by every source reading that bucket through that
        client (one probe, one connection pool), for as long as the client lives.
        """
        with _shared_lock:
            per_client = _shared.setdefault(client, {})
            if bucket not in per_client:
                per_client[bucket] = cls._build(client, bucket)
            return per_client[bucket]

    @classmethod
    def _build(cls, client: Any, bucket: str) -> FastGets | None:
        if any(os.environ.get(v) for v in PROXY_VARS):
            return None
        signer = getattr(client, "_request_signer", None)
        credentials = getattr(signer, "_credentials", None)
        if credentials is None or not hasattr(credentials, "get_frozen_credentials"):
            return None
        session = getattr(getattr(client, "_endpoint", None), "http_session", None)
        verify = getattr(session, "_verify", True)
        if not isinstance(verify, bool | str):
            return None
        template = learn_template(client, bucket)
        return None if template is None else cls(template, credentials, verify=verify)

    def _frozen(self) -> FrozenCredentials:
        c = self._credentials.get_frozen_credentials()  # refreshes expiring credentials
        return FrozenCredentials(c.access_key, c.secret_key, c.token)

    def get(self, key: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        """Send a signed GET of ``key`` with extra (unsigned) ``headers``; the response, unread.

        Raises OSError or http.client.HTTPException when the connection fails. A pooled
        connection the server closed while idle is replaced once, transparently.
        """
        return self._send(self.template.path_prefix + encode_key(key), "", headers, True)

    def list_page(
        self, prefix: str, token: str | None = None, *, max_keys: int = 1000
    ) -> tuple[int, bytes]:
        """One signed ListObjectsV2 request under ``prefix``: the HTTP status and the body.

        Keys come URL-encoded (``encoding-type=url``, as botocore asks), so any key survives
        XML; ``parse_list_page`` decodes them. Raises like ``get``.
        """
        params = {"list-type": "2", "encoding-type": "url", "prefix": prefix}
        if max_keys != 1000:
            params["max-keys"] = str(max_keys)
        if token:
            params["continuation-token"] = token
        path = self.template.path_prefix.rstrip("/") or "/"
        resp = self._send(path, canonical_query(params), {}, False)
        try:
            return resp.status, resp.read()
        finally:
            self.release(resp, reusable=True)

    def _send(
        self, path: str, query: str, headers: dict[str, str], checksum_mode: bool
    ) -> http.client.HTTPResponse:
        t = self.template
        target = f"{path}?{query}" if query else path
        while True:
            conn, reused = self._pool.take()
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            signed = self._signer.headers(
                t.netloc,
                path,
                self._frozen(),
                amz_date,
                query=query,
                checksum_mode=checksum_mode,
            )
            try:
                conn.request(
                    "GET", target, headers={**headers, **signed, "User-Agent": t.user_agent}
                )
                resp = conn.getresponse()
            except _STALE:
                conn.close()
                if reused:
                    continue  # closed by the server while idle: one more try on a fresh one
                raise
            except BaseException:
                conn.close()
                raise
            resp.mlstage_conn = conn  # type: ignore[attr-defined]
            return resp

    def release(self, resp: http.client.HTTPResponse, *, reusable: bool) -> None:
        """Give the response's connection back (only when its body was read to the end)."""
        conn = getattr(resp, "mlstage_conn", None)
        if conn is None:
            return
        if reusable and resp.isclosed() and not resp.will_close:
            self._pool.give_back(conn)
        else:
            resp.close()
            conn.close()
