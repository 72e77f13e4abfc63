"""benchmark-sweep's own helpers, without a Prefect API: Finished, artifact keys."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

from flows.benchmark_sweep import Finished, artifact_key
from mlstage.specs import DatasetSpec, ModelSpec, SweepSpec


class LateFuture:
    """Just what Finished uses of a future: done callbacks, fired from another thread."""

    def __init__(self, after: float) -> None:
        self.after = after

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        threading.Timer(self.after, fn, args=(self,)).start()


def test_finished_yields_in_finishing_order_and_ticks_while_nothing_finishes() -> None:
    ticks: list[float] = []
    steps: Finished[str] = Finished(idle=lambda: ticks.append(time.monotonic()), every=0.05)
    steps.add(LateFuture(0.4), "slow")  # type: ignore[arg-type]
    steps.add(LateFuture(0.0), "fast")  # type: ignore[arg-type]
    order = [tag for _, tag in steps]
    assert order == ["fast", "slow"]
    assert len(ticks) >= 3  # a progress bar waiting on the slow one still moves


def test_finished_takes_futures_added_while_it_is_iterated() -> None:
    steps: Finished[str] = Finished()
    steps.add(LateFuture(0.0), "first")  # type: ignore[arg-type]
    seen = []
    for _, tag in steps:
        seen.append(tag)
        if tag == "first":
            steps.add(LateFuture(0.0), "then")  # type: ignore[arg-type]
    assert seen == ["first", "then"]


def test_every_sweep_name_gives_valid_distinct_artifact_keys() -> None:
    for name in ("Müller Sweep", "résumé/v2", "ÅÄÖ", "a" * 300, "--x--"):
        sweep = SweepSpec(
            name=name,
            datasets=[DatasetSpec(name="d", uri="/data/d")],
            models=[ModelSpec(name="m", dataset="d", entrypoint="x:y")],
        )
        keys = {artifact_key(sweep, "progress"), artifact_key(sweep, "summary")}
        assert len(keys) == 2
        assert all(re.fullmatch(r"[a-z0-9-]{1,100}", k) for k in keys), keys
