"""The node-local cache: content-addressed objects, sealed read-only dataset trees, an SQLite index."""

from mlstage.cache.eviction import GcReport
from mlstage.cache.index import CacheIndex
from mlstage.cache.leases import Lease
from mlstage.cache.local import CacheStats, LocalCache, StagedDataset
from mlstage.cache.verify import Problem, VerifyReport

__all__ = [
    "CacheIndex",
    "CacheStats",
    "GcReport",
    "Lease",
    "LocalCache",
    "Problem",
    "StagedDataset",
    "VerifyReport",
]
