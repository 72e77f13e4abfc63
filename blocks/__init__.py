"""Prefect blocks: configuration and credentials only; each ``build()``s the mlstage object it configures.

Register every type with one command: ``prefect block register -m blocks``.
"""

from blocks.cache import CacheSettings
from blocks.clearml import ClearMLCredentials
from blocks.shared_tier import S3Credentials, SharedTierBlock

__all__ = ["CacheSettings", "ClearMLCredentials", "S3Credentials", "SharedTierBlock"]
