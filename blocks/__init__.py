"""Prefect blocks: configuration and credentials only; each ``build()``s the mlstage object it configures.

Register every type with one command: ``prefect block register -m blocks``.
"""

from blocks.cache import CacheSettings
from blocks.clearml import ClearMLCredentials
from blocks.shared_tier import SharedTierBlock, store_config

__all__ = ["CacheSettings", "ClearMLCredentials", "SharedTierBlock", "store_config"]
