"""benchmark-sweep's orchestration cost does not grow with a dataset's file count.

The flow is 3 Prefect task runs per model whatever the dataset holds: Prefect must never walk,
serialize or send a Manifest (a Prepared or Ready holds one entry per file). Counted, not
timed: Python calls made by Prefect's own code in the flow's threads, and the bytes the
Prefect client sends to the API, for a small and a 10x larger dataset.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from mlstage.specs import DatasetSpec, ModelSpec, RecipeSpec, SweepSpec
from mlstage.testing.workloads import make_dataset

pytestmark = [pytest.mark.prefect, pytest.mark.integration]

COUNT = "mlstage.testing.workloads:count_files"


@dataclass
class PrefectWork:
    calls: int = 0  # Python function calls in prefect's own modules
    api_bytes: int = 0  # request bodies and events the Prefect client sent to the API


def flush_prefect() -> None:
    """Send the logs and events Prefect still queues, so each count holds only its own run's."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        service.drain_all(timeout=30, at_exit=False)


@contextmanager
def prefect_work(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], PrefectWork]]:
    """``count()`` -> a context that counts Prefect's calls (this thread and threads started
    inside) and the bytes it sends to its API (HTTP bodies and events)."""
    import prefect
    from prefect.client.base import PrefectHttpxAsyncClient, PrefectHttpxSyncClient
    from prefect.events.clients import EventsClient

    root = str(Path(prefect.__file__).parent)
    lock = threading.Lock()
    current = [PrefectWork()]

    def add(n: int) -> None:
        with lock:
            current[0].api_bytes += n

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename.startswith(root):
            current[0].calls += 1  # under the GIL; a lost increment only lowers the count

    asend, ssend, emit = (
        PrefectHttpxAsyncClient.send,
        PrefectHttpxSyncClient.send,
        EventsClient.emit,
    )

    async def counted_asend(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        add(len(request.content or b""))
        return await asend(self, request, *args, **kwargs)

    def counted_ssend(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        add(len(request.content or b""))
        return ssend(self, request, *args, **kwargs)

    async def counted_emit(self: Any, event: Any) -> None:
        add(len(event.model_dump_json()))
        return await emit(self, event)

    monkeypatch.setattr(PrefectHttpxAsyncClient, "send", counted_asend)
    monkeypatch.setattr(PrefectHttpxSyncClient, "send", counted_ssend)
    monkeypatch.setattr(EventsClient, "emit", counted_emit)

    @contextmanager
    def count() -> Iterator[PrefectWork]:
        flush_prefect()
        current[0] = work = PrefectWork()
        threading.setprofile(profile)
        sys.setprofile(profile)
        try:
            yield work
            flush_prefect()
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]
            current[0] = PrefectWork()

    yield count


def one_model_sweep(data: Path) -> SweepSpec:
    return SweepSpec(
        name="overhead",
        datasets=[DatasetSpec(name="big", uri=str(data), recipe=RecipeSpec(name="identity"))],
        models=[ModelSpec(name="one", dataset="big", entrypoint=COUNT)],
    )


def test_prefect_does_no_work_per_file(
    home: Path, prefect_api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows._workspace import reset_workspace
    from flows.benchmark_sweep import benchmark_sweep

    small, large = 30, 300
    benchmark_sweep(one_model_sweep(make_dataset(tmp_path, "warm", 5)))  # imports, first calls
    seen: dict[int, PrefectWork] = {}
    with prefect_work(monkeypatch) as count:
        for files in (small, large):
            monkeypatch.setenv("MLSTAGE_HOME", str(tmp_path / f"home-{files}"))
            reset_workspace()
            data = make_dataset(tmp_path, f"d{files}", files)
            with count() as work:
                rows = benchmark_sweep(one_model_sweep(data))
            assert rows[0]["status"] == "completed" and rows[0]["score"] == files
            seen[files] = work

    added = large - small
    calls = seen[large].calls - seen[small].calls
    sent = seen[large].api_bytes - seen[small].api_bytes
    assert seen[small].calls > 1000, seen[small]  # the counter saw the flow and its tasks
    # a few dozen calls may differ with timing (polls, log and event batches); walking a
    # manifest costs ~75 calls a file, so even one call a file is a regression
    assert calls < added, f"Prefect made {calls} more calls for {added} more files"
    # ids, timings and byte counts differ a little; a manifest would add ~100 bytes a file
    assert sent < added * 4, f"Prefect sent {sent} more bytes to its API for {added} more files"
