"""Retries with exponential backoff and full jitter, for transient failures only."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from mlstage.errors import TransientError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a TransientError."""

    attempts: int = 8
    base_seconds: float = 0.05
    max_seconds: float = 5.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_seconds, self.base_seconds * 2**attempt))

    def call(
        self, fn: Callable[[], T], *, on_retry: Callable[[Exception], None] | None = None
    ) -> T:
        """Run ``fn``; retry it on TransientError until the attempts are used up."""
        for attempt in range(self.attempts):
            try:
                return fn()
            except TransientError as exc:
                if attempt == self.attempts - 1:
                    raise
                if on_retry:
                    on_retry(exc)
                time.sleep(self.delay(attempt))
        raise AssertionError("unreachable")
