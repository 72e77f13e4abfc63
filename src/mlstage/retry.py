"""Retries with exponential backoff and full jitter, for transient failures only."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from mlstage.errors import EndpointTimeout, SourceError, TransientError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a TransientError.

    ``timeout_attempts`` bounds the attempts that end in an EndpointTimeout (each one costs the
    whole read timeout): an endpoint that accepts connections and never answers fails a run
    after three timeouts, not eight.
    """

    attempts: int = 8
    base_seconds: float = 0.05
    max_seconds: float = 5.0
    timeout_attempts: int = 3

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_seconds, self.base_seconds * 2**attempt))

    def call(
        self, fn: Callable[[], T], *, on_retry: Callable[[Exception], None] | None = None
    ) -> T:
        """Run ``fn``; retry it on TransientError until the attempts are used up.

        The error that ends the retries carries ``attempts``, the number of attempts made.
        """
        timeouts = 0
        for attempt in range(self.attempts):
            try:
                return fn()
            except TransientError as exc:
                timeouts += isinstance(exc, EndpointTimeout)
                if attempt == self.attempts - 1 or timeouts >= self.timeout_attempts:
                    exc.attempts = attempt + 1
                    raise
                if on_retry:
                    on_retry(exc)
                time.sleep(self.delay(attempt))
        raise AssertionError("unreachable")

    def backoff(self) -> Backoff:
        """Retries counted by hand, for work that resumes where it failed (a listing)."""
        return Backoff(self)


class Backoff:
    """Consecutive failures of resumable work, under a RetryPolicy's limits."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.failures = 0
        self.timeouts = 0

    def failed(self, exc: TransientError) -> None:
        """Sleep before the next attempt; raise ``exc`` (with ``attempts``) when none is left."""
        self.failures += 1
        self.timeouts += isinstance(exc, EndpointTimeout)
        if self.failures >= self.policy.attempts or self.timeouts >= self.policy.timeout_attempts:
            exc.attempts = self.failures
            raise exc
        time.sleep(self.policy.delay(self.failures - 1))

    def progressed(self) -> None:
        """The work moved on: failures before this point no longer count."""
        self.failures = 0


def gave_up(exc: TransientError, hint: str) -> SourceError:
    """The final error once retries of ``exc`` are used up: not transient any more (nothing
    above retries it again), saying how many attempts were made; ``exc``'s own hint if it has
    one (a timeout's says more than "keeps failing"), else ``hint``."""
    tries = f" (gave up after {exc.attempts} attempts)" if exc.attempts else ""
    err = SourceError(f"{exc.message}{tries}", hint=exc.hint or hint)
    err.__cause__ = exc
    return err
