"""obstore's errors -> mlstage's, once, at the store boundary: one line naming the object.

obstore raises a few classes (NotFoundError, PreconditionError, PermissionDeniedError, ...)
and, for most HTTP failures, ``GenericError``, whose message holds the HTTP status, the
response body (S3's ``<Error><Code>...``) and reqwest's error kind (``Timeout``, ``Connect``,
``Interrupted``, ``Decode``). ``map_error`` reads those and gives::

    s3://bucket/key: GET: HTTP 503 SlowDown                  TransientError (retried)
    s3://bucket/key: GET: no answer within 20 s              EndpointTimeout (retried twice)
    s3://bucket/key: GET: not found (HTTP 404 NoSuchKey)     ObjectNotFound
    s3://bucket/key: GET: access denied (HTTP 403 ...)       AccessDenied
    s3://bucket/key: the object changed since ...            ObjectChanged (412)

with a hint. Nothing else of obstore's message is repeated: no body beyond its ``<Code>``,
no request details, so nothing a server echoes back ends up in logs. Credentials are never
in obstore's messages (requests are signed in headers, which it does not print).
"""

from __future__ import annotations

import re

from mlstage.errors import (
    AccessDenied,
    EndpointTimeout,
    MlstageError,
    ObjectChanged,
    ObjectNotFound,
    SourceError,
    TransientError,
    UnsafePathError,
)

_STATUS = re.compile(r"status code: (\d{3})|status: (\d{3})")
_CODE = re.compile(r"<Code>([A-Za-z0-9._-]{1,64})</Code>")
_REGION = re.compile(r"<Region>([a-z0-9-]{1,32})</Region>")
_KIND = re.compile(r"kind: (Connect|Request|Timeout|Interrupted|Decode|Unknown)\b")
_INVALID_PATH = re.compile(r'[Pp]ath "([^"]{0,300})"')

_MISSING = {"NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded"}
_TRANSIENT = _THROTTLED | {
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "OperationAborted",
    "ConditionalRequestConflict",  # another conditional PUT of the key is in flight
}
_WRONG_REGION = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraint"}
_NOT_PARTIAL = "non-partial response when range requested"


class RangesIgnored(SourceError):
    """The endpoint answered a ranged GET with 200 (the whole object, or a 200 with a
    Content-Range as rclone's server does): obstore refuses such an answer."""


def parts(exc: BaseException) -> tuple[int | None, str]:
    """The HTTP status and S3 error ``<Code>`` in an obstore error ('' when it has none)."""
    text = str(exc)
    m = _STATUS.search(text)
    status = int(m.group(1) or m.group(2)) if m else None
    code = _CODE.search(text)
    return status, code.group(1) if code else ""


def map_error(
    exc: BaseException,
    uri: str,
    what: str,
    *,
    where: str = "the endpoint",
    read_timeout: float | None = None,
    connect_transient: bool = False,
) -> MlstageError:
    """The mlstage error for ``exc`` raised by obstore while doing ``what`` to ``uri``.

    ``where`` names the endpoint in hints; ``connect_transient``: a refused connection is
    worth a retry (mid-transfer, after the endpoint answered); while listing it means a wrong
    endpoint, said at once.
    """
    if isinstance(exc, MlstageError):
        return exc
    from obstore import exceptions as ox

    text = str(exc)
    status, code = parts(exc)
    said = f"HTTP {status} {code}".rstrip() if status else code
    if isinstance(exc, ox.InvalidPathError) or (
        isinstance(exc, ValueError) and "parse path" in text
    ):
        return _invalid_key(uri, text)
    if _NOT_PARTIAL in text:
        return RangesIgnored(f"{uri}: {what}: {where} answered a ranged GET with 200")
    if isinstance(exc, ox.PreconditionError) or status == 412 or code == "PreconditionFailed":
        return ObjectChanged(
            f"{uri}: the object changed since the dataset was resolved ({said or 'HTTP 412'})",
            hint="re-resolve the dataset and stage the new version",
        )
    if isinstance(exc, ox.NotFoundError) or status == 404 or code in _MISSING:
        return ObjectNotFound(
            f"{uri}: {what}: not found ({said or 'HTTP 404'})",
            hint="check the bucket and prefix (they are case-sensitive) and AWS_ENDPOINT_URL",
        )
    if code in _WRONG_REGION or status == 301:
        region = _REGION.search(text)
        to = f"AWS_REGION={region.group(1)}" if region else "AWS_REGION to the bucket's region"
        return AccessDenied(
            f"{uri}: {what}: {said} (the bucket is in another region)",
            hint=f"set {to} (or the block's region)",
        )
    if (
        isinstance(exc, ox.PermissionDeniedError | ox.UnauthenticatedError)
        or status in (401, 403)
        or code in _DENIED
    ):
        return AccessDenied(
            f"{uri}: {what}: access denied ({said or 'refused'})",
            hint=f"{where} refused the credentials: check AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the block's AwsCredentials",
        )
    if status == 429 or code in _TRANSIENT or (status is not None and status >= 500):
        return TransientError(f"{uri}: {what}: {said}")
    if status is not None:
        return SourceError(f"{uri}: {what}: unexpected {said}")
    kind = _KIND.search(text)
    if kind and kind.group(1) == "Timeout":
        waited = f"{read_timeout:g} s" if read_timeout else "the read timeout"
        return EndpointTimeout(
            f"{uri}: {what}: no answer from {where} within {waited}",
            hint="the endpoint accepts connections but does not answer; check it, or raise "
            "MLSTAGE_READ_TIMEOUT",
        )
    if kind and kind.group(1) == "Connect":
        if connect_transient:
            return TransientError(f"{uri}: {what}: cannot connect to {where}")
        return SourceError(
            f"{uri}: cannot reach {where} ({_connect_cause(text)})",
            hint="check AWS_ENDPOINT_URL, the network and, for https, AWS_CA_BUNDLE",
        )
    if "invalid list response" in text.lower():
        return TransientError(f"{uri}: {what}: an unreadable listing page")
    if "body error" in text or "Response body" in text:
        return TransientError(f"{uri}: {what}: the response body was cut short")
    if kind:  # a reset, a connection closed mid-way: the next attempt may succeed
        return TransientError(f"{uri}: {what}: {_KIND_SAID.get(kind.group(1), 'failed')}")
    return SourceError(f"{uri}: {what} failed: {_first_line(text)}")


_KIND_SAID = {
    "Interrupted": "the connection was cut",
    "Request": "the request failed",
    "Decode": "the response could not be decoded",
}


_CONNECT_CAUSES = (
    ("ConnectionRefused", "connection refused"),
    ("dns error", "the host name does not resolve"),
    ("certificate", "its TLS certificate is not trusted"),
    ("InvalidMessage", "no TLS handshake: is it plain http?"),
    ("InvalidContentType", "no TLS handshake: is it plain http?"),
    ("TimedOut", "no connection within the connect timeout"),
)


def _invalid_key(uri: str, text: str) -> UnsafePathError:
    """A key obstore cannot address (Rust object_store's path rules), named with why."""
    m = _INVALID_PATH.search(text)
    key = m.group(1) if m else ""
    segments = key.split("/")
    if ".." in segments:
        why, hint = "it escapes the destination with '..'", "remove '..' from the key"
    elif "" in segments[:-1] or "empty path segment" in text:
        why, hint = "it has an empty segment ('//')", "rename it without '//'"
    elif "." in segments:
        why, hint = "it has a '.' segment", "rename it without '/./'"
    else:
        why, hint = "it holds a character object_store refuses", "rename it"
    return UnsafePathError(
        f"{uri}: refusing the key {key!r}: {why}" if key else f"{uri}: a key obstore refuses",
        hint=f"{hint}; keys with an empty, '.' or '..' segment or a control character cannot be "
        "listed or read through obstore (Rust object_store's path rules), so stage a prefix "
        "without them",
    )


def _connect_cause(text: str) -> str:
    lowered = text.lower()
    for needle, cause in _CONNECT_CAUSES:
        if needle.lower() in lowered:
            return cause
    return "the connection failed"


def _first_line(text: str) -> str:
    """obstore's first line without the request URL (the object is named already)."""
    line = text.split("\n", 1)[0]
    line = re.sub(r"https?://\S+", "", line)
    line = re.sub(r"\s+in [0-9.]+\S*s\b", "", line)
    return line.replace("Generic S3 error: ", "").strip()[:200]
