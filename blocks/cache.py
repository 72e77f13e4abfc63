"""Node-local cache settings as a Prefect block."""

from __future__ import annotations

from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field

from mlstage.cache import LocalCache


class CacheSettings(Block):
    """Where this node's cache lives and how hard staging works."""

    _block_type_name = "mlstage cache settings"
    _block_type_slug = "mlstage-cache-settings"
    _description = "mlstage's node-local cache: folder, size limit, transfer concurrency."

    cache_dir: str = Field(
        description="Node-local cache folder (on Kubernetes: the hostPath mount, e.g. /mlstage-cache)."
    )
    limit_bytes: int = Field(default=0, ge=0, description="Size limit in bytes; 0: unlimited.")
    workers: int = Field(default=16, ge=1, le=256, description="Concurrent transfers per staging.")
    part_size: int = Field(
        default=16 * 1024 * 1024,
        ge=1024 * 1024,
        description="Objects larger than this are fetched as parallel ranged GETs of this size.",
    )

    check_hits: bool = Field(
        default=True,
        description="Check a cached dataset's tree against its seal each time it is handed out "
        "(one stat a file; catches a job that wrote into its data). Off only where jobs get "
        "the cache read-only.",
    )

    def build(self) -> LocalCache:
        """The LocalCache this block configures."""
        return LocalCache(
            Path(self.cache_dir).expanduser(),
            limit_bytes=self.limit_bytes,
            check_hits=self.check_hits,
        )
