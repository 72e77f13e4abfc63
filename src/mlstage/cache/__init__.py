"""The node-local cache: content-addressed objects, read-only dataset trees, an SQLite index."""

from mlstage.cache.index import CacheIndex
from mlstage.cache.local import CacheStats, LocalCache, StagedDataset

__all__ = ["CacheIndex", "CacheStats", "LocalCache", "StagedDataset"]
