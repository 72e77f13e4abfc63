"""Remembered S3 endpoints: a later process reads a bucket without starting botocore.

Importing boto3 and building an S3 client costs ~0.35 s of a CLI run here (botocore's modules,
the S3 service model, the endpoint rules): a third of staging 512 MB, more than staging 1,500
small objects takes on some stores. What ``FastGets`` needs from botocore is small: how a
GetObject request of a bucket looks (``GetTemplate``: URL layout, signing region and service)
and the credentials. The template depends on the AWS configuration and the bucket, never on
the credentials, so it can be remembered.

``EndpointMemo`` keeps one template per bucket and AWS configuration in ``<folder>/<key>.json``
(``mlstage.sources.s3`` uses MLSTAGE_ENDPOINTS_DIR, by default ``<cache_dir>/endpoints``
beside the node-local cache, so pods sharing a node's cache share it). No credential is ever
written. The key covers every ``AWS_*`` variable except the credentials themselves, the AWS
config file's size and mtime, and the installed botocore, so a changed endpoint, region,
profile, addressing style or CA bundle never meets an old template.

A remembered template is used only when botocore would take the credentials from the
environment (``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` set, no expiry, no proxy,
``MLSTAGE_S3_BOTO3_READS`` unset), and it is trusted only once a listing through it has
succeeded: until then nothing is read through it, and if that first listing fails in any way
the template is forgotten and the source asks botocore again, exactly as without a memo. A
template naming a host the environment does not point at (``_expected_host``) is never used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlstage.sources.s3_get import (
    PROXY_VARS,
    FastGets,
    FrozenCredentials,
    GetTemplate,
    ca_bundle,
)

_FORMAT = 1
_CREDENTIAL_VARS = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_CREDENTIAL_EXPIRATION",
    }
)
# one FastGets (one connection pool) per memo file and credentials, shared in this process
_live: dict[tuple[Path, EnvironmentCredentials], FastGets] = {}
_live_lock = threading.Lock()


@dataclass(frozen=True)
class EnvironmentCredentials:
    """Static credentials from the environment, behind botocore's ``get_frozen_credentials``."""

    access_key: str
    secret_key: str
    token: str | None = None

    def get_frozen_credentials(self) -> FrozenCredentials:
        return FrozenCredentials(self.access_key, self.secret_key, self.token)

    def __repr__(self) -> str:  # never print the secret
        return f"EnvironmentCredentials(access_key={self.access_key!r}, secret_key='***')"


def environment_credentials() -> EnvironmentCredentials | None:
    """The credentials botocore would take from the environment, when it would take them there.

    None when the remembered path must not be used: no static key pair, credentials that
    expire (botocore would refresh them), a proxy (``FastGets`` does not speak to proxies), or
    ``MLSTAGE_S3_BOTO3_READS`` set.
    """
    env = os.environ
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret or env.get("AWS_CREDENTIAL_EXPIRATION"):
        return None
    if env.get("MLSTAGE_S3_BOTO3_READS") or any(env.get(v) for v in PROXY_VARS):
        return None
    token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None
    return EnvironmentCredentials(key, secret, token)


def configuration_key(bucket: str) -> str:
    """A name for ``bucket`` under this process's AWS configuration (no credential in it)."""
    parts: list[Any] = [_FORMAT, bucket]
    parts += sorted(
        (k, v) for k, v in os.environ.items() if k.startswith("AWS_") and k not in _CREDENTIAL_VARS
    )
    config = os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config"
    parts.append(_stat(Path(config).expanduser()))
    parts.append(_stat(_botocore_origin()))
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:32]


def _stat(path: Path | None) -> tuple[str, int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_size, st.st_mtime_ns)


def _botocore_origin() -> Path | None:
    """botocore's ``__init__.py`` (found without importing it): a new install changes its mtime."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("botocore")
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin else None


class EndpointMemo:
    """Remembered GetObject templates under ``folder`` (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _file(self, bucket: str) -> Path:
        return self.folder / f"{configuration_key(bucket)}.json"

    def recall(self, bucket: str) -> FastGets | None:
        """FastGets for ``bucket`` from a remembered template, unproven; None if none applies.

        Shared by every source of this process asking for the same bucket and configuration.
        """
        creds = environment_credentials()
        if creds is None:
            return None
        path = self._file(bucket)
        with _live_lock:
            fast = _live.get((path, creds))
            if fast is None:
                stored = _read(path, bucket)
                if stored is None:
                    return None
                template, verify = stored
                fast = _live[(path, creds)] = FastGets(
                    template, creds, verify=verify, remembered=True
                )
            return fast

    def remember(self, bucket: str, fast: FastGets) -> None:
        """Keep ``fast``'s template for later processes (atomically; a failure only costs speed)."""
        if environment_credentials() is None:
            return  # nothing could use it
        path = self._file(bucket)
        record = {
            "format": _FORMAT,
            "bucket": bucket,
            "template": dataclasses.asdict(fast.template),
            # the CA bundle's path, so that https needs no botocore to find it either
            "verify": ca_bundle(fast.verify) if fast.template.scheme == "https" else fast.verify,
        }
        text = json.dumps(record, indent=1)
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                return  # a re-resolve: nothing new to keep
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def forget(self, bucket: str) -> None:
        """Drop ``bucket``'s remembered template (it failed its first listing)."""
        path = self._file(bucket)
        with _live_lock:
            for key in [k for k in _live if k[0] == path]:
                del _live[key]
        with contextlib.suppress(OSError):
            path.unlink()


def _read(path: Path, bucket: str) -> tuple[GetTemplate, bool | str] | None:
    """The template and TLS setting stored at ``path``; None when missing or unreadable."""
    try:
        record = json.loads(path.read_text())
        if record.get("format") != _FORMAT or record.get("bucket") != bucket:
            return None
        template = GetTemplate(**record["template"])
        verify = record["verify"]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    if not isinstance(verify, bool | str) or not _expected_host(template, bucket):
        return None
    return template, verify


def _expected_host(template: GetTemplate, bucket: str) -> bool:
    """Whether requests would go where this configuration points: the AWS_ENDPOINT_URL(_S3)
    host (path or virtual-host style), else AWS's own S3 hosts.

    A memo file that names any other host (an endpoint from the AWS config file, or a file
    someone else wrote) is not used: botocore decides, so a signed request never goes to a
    host the environment does not name.
    """
    from urllib.parse import urlsplit

    if template.scheme not in ("http", "https"):
        return False
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    host = template.netloc.lower()
    if endpoint:
        configured = urlsplit(endpoint)
        netloc = configured.netloc.lower()
        return template.scheme == configured.scheme and host in (netloc, f"{bucket}.{netloc}")
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return template.scheme == "https" and name.endswith((".amazonaws.com", ".amazonaws.com.cn"))
