"""Where an S3 bucket is and who may use it: the one place that configures the connection.

``StoreConfig`` holds the endpoint, region, credentials, CA bundle, proxy, addressing style
and timeouts; ``StoreConfig.from_env()`` reads them from the standard AWS environment
(``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``,
``AWS_ACCESS_KEY_ID`` ..., ``AWS_PROFILE``, ``AWS_CA_BUNDLE``, ``HTTPS_PROXY`` / ``NO_PROXY``)
and mlstage's settings (``MLSTAGE_READ_TIMEOUT``); a Prefect block builds one from its fields
(``blocks/shared_tier.py``). ``StoreConfig.open(bucket)`` makes the obstore ``S3Store``.

Credentials, in boto3's order:

1. a ``credential_provider`` given by the caller (a block's boto3 session, say);
2. static keys (``AWS_ACCESS_KEY_ID`` + ``AWS_SECRET_ACCESS_KEY``, with ``AWS_SESSION_TOKEN``):
   handed to obstore as they are, without importing boto3 (importing boto3 and building its
   session cost ~0.35 s of every CLI run here);
3. anything else (``AWS_PROFILE``, SSO, web identity / IRSA, container and instance roles,
   ``credential_process``): boto3's credential chain, handed to obstore through
   ``obstore.auth.boto3.Boto3CredentialProvider``, which refreshes them.

obstore also reads ``AWS_*`` variables by itself; credentials always reach it through a
provider, so a session token in the environment can never be mixed with a block's keys.
Secrets are ``SecretStr``: never shown by ``repr``, logged or written anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from mlstage.errors import AccessDenied, ConfigError

CONNECT_TIMEOUT = 10.0
# reqwest's whole-request timeout (obstore's default: 30 s) would cut off any part or object
# that takes longer to arrive; the read timeout already catches a silent endpoint
_NO_TOTAL_TIMEOUT = "30d"
CredentialProvider = Callable[[], Any]  # obstore's S3CredentialProvider protocol


@dataclass(frozen=True)
class StoreConfig:
    """How to reach S3 or an S3-compatible store; secrets only as ``SecretStr``."""

    endpoint: str | None = None  # None: AWS itself, by region
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = field(default=None, repr=False)
    session_token: SecretStr | None = field(default=None, repr=False)
    profile: str | None = None  # an AWS profile, resolved by boto3
    credential_provider: CredentialProvider | None = field(default=None, repr=False)
    anonymous: bool = False  # unsigned requests (public buckets)
    ca_bundle: str | None = None  # PEM file of extra trusted roots (AWS_CA_BUNDLE)
    allow_invalid_certificates: bool = False
    proxy: str | None = None
    no_proxy: str | None = None
    virtual_hosted: bool | None = None  # None: virtual-hosted on AWS, path-style elsewhere
    connect_timeout: float = CONNECT_TIMEOUT
    read_timeout: float = 20.0
    etag_is_md5: bool = True  # single-part ETags are MD5s (not under SSE-KMS / SSE-C)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> StoreConfig:
        """The standard AWS environment (and MLSTAGE_READ_TIMEOUT), then ``overrides``."""
        from mlstage.settings import get_settings

        env = os.environ if env is None else env
        settings = get_settings()
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN")
        static = bool(key and secret)
        hosted = env.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "").lower()  # obstore's own variable
        scheme = urlsplit(endpoint).scheme if endpoint else "https"
        proxy = (
            env.get("HTTPS_PROXY") or env.get("https_proxy")
            if scheme == "https"
            else env.get("HTTP_PROXY") or env.get("http_proxy")
        )
        config = cls(
            endpoint=endpoint,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            access_key_id=key if static else None,
            secret_access_key=SecretStr(secret) if static and secret else None,
            session_token=SecretStr(token) if static and token else None,
            profile=env.get("AWS_PROFILE") or None,
            anonymous=env.get("AWS_SKIP_SIGNATURE", "").lower() in ("1", "true"),
            ca_bundle=env.get("AWS_CA_BUNDLE") or None,
            proxy=proxy or None,
            no_proxy=env.get("NO_PROXY") or env.get("no_proxy") or None,
            virtual_hosted={"true": True, "1": True, "false": False, "0": False}.get(hosted),
            read_timeout=settings.read_timeout,
            etag_is_md5=settings.s3_etag_is_md5,
        )
        return replace(config, **overrides) if overrides else config

    @property
    def endpoint_id(self) -> str:
        """Which server this is, for what is learnt about a server's behaviour (ranges)."""
        return (self.endpoint or f"aws:{self.region or 'us-east-1'}").rstrip("/")

    def where(self) -> str:
        """The endpoint as an error message names it."""
        return self.endpoint or f"AWS S3 ({self.region or 'us-east-1'})"

    def open(self, bucket: str) -> Any:
        """The obstore ``S3Store`` of ``bucket``: no request is sent yet.

        Raises AccessDenied when no credentials can be found, ConfigError for a setting
        obstore refuses.
        """
        from obstore.store import S3Store

        kwargs: dict[str, Any] = {}
        if self.endpoint:
            kwargs["endpoint"] = self.endpoint.rstrip("/")
        if self.region:
            kwargs["region"] = self.region
        virtual = self.virtual_hosted
        if virtual is None:  # botocore's choice: virtual-hosted on AWS, unless TLS cannot be
            virtual = not self.endpoint and "." not in bucket
        if virtual and self.endpoint:  # obstore wants the bucket in a virtual-hosted endpoint
            parts = urlsplit(self.endpoint)
            kwargs["endpoint"] = f"{parts.scheme}://{bucket}.{parts.netloc}{parts.path}".rstrip("/")
        kwargs["virtual_hosted_style_request"] = virtual
        provider = self._provider()
        if provider is None:
            kwargs["skip_signature"] = True
        elif "region" not in kwargs and getattr(provider, "config", {}).get("region"):
            kwargs["region"] = provider.config["region"]  # the profile's region, via boto3
        try:
            return S3Store(
                bucket,
                client_options=self._client_options(),
                retry_config={"max_retries": 0},  # mlstage retries, once, with its own policy
                credential_provider=provider,
                **kwargs,
            )
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"s3://{bucket}: the S3 configuration is refused ({exc})",
                hint="check AWS_ENDPOINT_URL, AWS_REGION and the block's fields",
            ) from exc

    def _client_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "connect_timeout": f"{int(self.connect_timeout * 1000)}ms",
            "read_timeout": f"{int(self.read_timeout * 1000)}ms",
            "timeout": _NO_TOTAL_TIMEOUT,
            "user_agent": "mlstage (obstore)",
        }
        if self.endpoint and self.endpoint.startswith("http://"):
            options["allow_http"] = True
        elif self.ca_bundle:
            options["root_certificate"] = _read_pem(self.ca_bundle)
        if self.allow_invalid_certificates:
            options["allow_invalid_certificates"] = True
        if self.proxy:
            options["proxy_url"] = self.proxy
            if self.no_proxy:
                options["proxy_excludes"] = self.no_proxy
        return options

    def _provider(self) -> CredentialProvider | None:
        """The credentials' provider, by the module docstring's order; None: unsigned."""
        if self.credential_provider is not None:
            return self.credential_provider
        if self.access_key_id and self.secret_access_key:
            return StaticCredentials(self.access_key_id, self.secret_access_key, self.session_token)
        if self.anonymous:
            return None
        return _boto3_chain(self.profile)


class StaticCredentials:
    """Fixed keys, as obstore's credential provider: asked once (they never expire)."""

    def __init__(
        self, access_key_id: str, secret_access_key: SecretStr, token: SecretStr | None = None
    ) -> None:
        self._key = access_key_id
        self._secret = secret_access_key
        self._token = token

    def __call__(self) -> dict[str, Any]:
        return {
            "access_key_id": self._key,
            "secret_access_key": self._secret.get_secret_value(),
            "token": self._token.get_secret_value() if self._token else None,
            "expires_at": None,
        }

    def __repr__(self) -> str:
        return f"StaticCredentials({self._key!r}, **********)"


def _boto3_chain(profile: str | None) -> CredentialProvider:
    """boto3's credential chain (profile, SSO, web identity, roles), refreshed by obstore."""
    try:
        import boto3
        from botocore.exceptions import BotoCoreError
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError as exc:  # pragma: no cover - boto3 is a dependency
        raise AccessDenied(
            "no static AWS credentials and boto3 is not installed to find others",
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or install boto3",
        ) from exc
    try:
        return Boto3CredentialProvider(boto3.Session(profile_name=profile))
    except (ValueError, BotoCoreError) as exc:
        said = "no AWS credentials found" if isinstance(exc, ValueError) else str(exc)
        raise AccessDenied(
            said,
            hint="set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give "
            "the block AwsCredentials",
        ) from exc


def _read_pem(path: str) -> bytes:
    """A CA bundle's bytes, handed to obstore as extra trusted roots."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(
            f"AWS_CA_BUNDLE={path}: cannot read it ({exc.strerror})",
            hint="point AWS_CA_BUNDLE at a readable PEM file, or unset it",
        ) from exc
