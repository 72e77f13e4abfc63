"""The one exception tree of mlstage.

    MlstageError
     ├── ConfigError(ValueError)          bad input: a spec, a URI, a setting
     ├── SourceError                      a source could not be listed or read
     │    ├── ObjectNotFound(FileNotFoundError)   bucket, prefix, key, dataset or file missing
     │    ├── AccessDenied(PermissionError)       credentials missing or refused
     │    ├── ObjectChanged                       replaced since the dataset was resolved (412)
     │    └── TransientError                      throttling, 5xx, resets, truncated bodies: retried
     │         └── EndpointTimeout(TimeoutError)  no answer within the timeout: retried twice
     ├── UnsafePathError(ValueError)      a key or archive member that would escape its destination
     ├── IntegrityError                   bytes that do not match their size or checksum
     ├── CacheError                       the node-local cache is unusable or inconsistent
     ├── SharedTierError                  the shared tier could not be read or written
     ├── StateError                       the state DB is unreachable or refused the operation
     └── RunError                         a model entrypoint failed to import or to run

Lower-layer errors (obstore, httpx, OSError, ClearML) are mapped at the adapter boundary with
the URI or path and a hint, so callers see one line that says what and where.
"""

from __future__ import annotations


class MlstageError(Exception):
    """Root of every error mlstage raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} (hint: {hint})" if hint else message)


class ConfigError(MlstageError, ValueError):
    """Bad input: a spec, a URI, a setting."""


class SourceError(MlstageError):
    """A source could not be listed or read."""


class ObjectNotFound(SourceError, FileNotFoundError):
    """A bucket, prefix, key, dataset or file does not exist."""


class AccessDenied(SourceError, PermissionError):
    """Credentials are missing or were refused."""


class ObjectChanged(SourceError):
    """An object no longer is the version its listing named (HTTP 412 on a conditional read)."""


class TransientError(SourceError):
    """A failure worth retrying: throttling, 5xx, connection resets, truncated bodies."""

    attempts: int | None = None  # set by RetryPolicy on the error that ended its retries


class EndpointTimeout(TransientError, TimeoutError):
    """An endpoint accepted the connection, then sent nothing within the read timeout.

    Retried at most twice (``RetryPolicy.timeout_attempts``): a hung endpoint costs each
    attempt the whole timeout, so the usual eight attempts would hold a run for minutes.
    """


class UnsafePathError(MlstageError, ValueError):
    """A key or archive member would escape its destination (``..``, absolute, link)."""


class IntegrityError(MlstageError):
    """Bytes do not match the size or checksum their source promised."""


class CacheError(MlstageError):
    """The node-local cache is unusable or inconsistent."""


class SharedTierError(MlstageError):
    """The shared tier could not be read or written."""


class StateError(MlstageError):
    """The state DB is unreachable or refused the operation."""


class RunError(MlstageError):
    """A model entrypoint failed to import or to run."""
