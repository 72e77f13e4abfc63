"""Settings, read from MLSTAGE_* environment variables when asked for (never at import)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from mlstage.cache import LocalCache


def _default_home() -> Path:
    return Path.home() / ".mlstage"


class Settings(BaseSettings):
    """Where mlstage keeps its state on this node, and how hard it works."""

    model_config = SettingsConfigDict(env_prefix="MLSTAGE_", extra="ignore")

    home: Path = Field(
        default_factory=_default_home,
        description="Root folder for the embedded defaults (state DB, cache, shared tier).",
    )
    state_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the state DB; default: a SQLite file under home. "
        "Secret: it may hold a password; revealed only where the engine is made.",
    )
    shared: str | None = Field(
        default=None,
        description="Shared tier: a folder or s3://bucket/prefix; default: home/shared.",
    )
    cache_dir: Path | None = Field(
        default=None, description="Node-local cache folder; default: home/cache."
    )
    hit_check: Literal["seal", "none"] = Field(
        default="seal",
        description="Before a cached dataset is handed out, check its tree against the seal "
        "taken when it was staged (one lstat a file, no data read): a job that wrote into its "
        "data, even as root, is caught and the tree rebuilt. 'none' trusts the cache: a hit "
        "costs the same whatever the dataset's size; for nodes whose jobs get the cache "
        "read-only (a readOnly mount).",
    )
    cache_limit_bytes: int = Field(
        default=0, ge=0, description="Cache size limit in bytes; 0 means unlimited."
    )
    workers: int = Field(
        default=16, ge=1, le=256, description="Concurrent object transfers per staging."
    )
    slot_limit: str | None = Field(
        default=None,
        description="The Prefect global concurrency limit whose slots models with slots > 0 "
        "hold while they run (this node's capacity, e.g. its GPUs); default: "
        "mlstage-slots- and this node's hostname. The same name on several nodes makes one "
        "capacity for all of them (a pool).",
    )
    part_size: int = Field(
        default=16 * 1024 * 1024,
        ge=1024 * 1024,
        description="Objects larger than this are fetched as parallel ranged GETs of this size.",
    )
    read_timeout: float = Field(
        default=20.0,
        gt=0,
        le=3600,
        description="Seconds an S3 or HTTP endpoint may stay silent (waiting for an answer, or "
        "between two reads of a body) before the request counts as timed out; a timed-out "
        "request is retried at most twice. Connecting has its own 10 s limit; a whole "
        "transfer has none (a large part may take long on a slow link).",
    )
    s3_etag_is_md5: bool = Field(
        default=True,
        description="Verify single-part S3 objects against the MD5 their ETag holds. Turn off "
        "for buckets encrypted with SSE-KMS or SSE-C, whose ETags are not MD5s (the response "
        "header that tells them apart is not exposed by obstore); size and If-Match still "
        "apply.",
    )

    @property
    def resolved_state_url(self) -> SecretStr:
        """The state DB URL, still secret: ``StateStore.open`` / ``make_engine`` reveal it."""
        return self.state_url or SecretStr(f"sqlite:///{self.home / 'state.db'}")

    @property
    def resolved_shared(self) -> str:
        return self.shared or str(self.home / "shared")

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.home / "cache"


def open_cache(settings: Settings) -> LocalCache:
    """This node's cache as ``settings`` configure it (folder, limit, hit check)."""
    from mlstage.cache import LocalCache

    return LocalCache(
        settings.resolved_cache_dir,
        limit_bytes=settings.cache_limit_bytes,
        check_hits=settings.hit_check == "seal",
    )


def get_settings() -> Settings:
    """Read the settings from the environment now; a bad value is a ConfigError naming it."""
    from mlstage.errors import ConfigError

    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err.get("loc") else "*"
        name = f"MLSTAGE_{field.upper()}"
        value = "***" if field == "state_url" else repr(err.get("input"))
        raise ConfigError(f"{name}={value}: {err['msg']}", hint=f"fix or unset {name}") from exc
