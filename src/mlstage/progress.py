"""Progress for humans on stderr (a byte bar, a listing counter); silent off a terminal."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


class ByteProgress:
    def __init__(self, total: int, description: str, *, enabled: bool = True) -> None:
        self.total = total
        self.description = description
        self.enabled = enabled and sys.stderr.isatty()
        self._lock = threading.Lock()
        self._progress = None
        self._task = None

    def __enter__(self) -> ByteProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            self._progress = Progress(
                "{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total)
        return self

    def advance(self, n: int) -> None:
        if self._progress is not None:
            with self._lock:
                self._progress.update(self._task, advance=n)

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()


class ListingStatus:
    """``listing URI: N objects`` on stderr while a listing runs, for listings that take time.

    Shown only on a terminal, and only once the listing has taken ``delay`` seconds (a quick
    one prints nothing). ``count`` reads how many objects were listed so far (None: unknown).
    """

    def __init__(
        self,
        uri: str,
        count: Callable[[], int | None],
        *,
        enabled: bool = True,
        delay: float = 0.5,
        console: Console | None = None,
    ) -> None:
        self.uri = uri
        self.count = count
        self.delay = delay
        self.console = console
        self.enabled = enabled and (console is not None or sys.stderr.isatty())
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ListingStatus:
        if self.enabled:
            self._thread = threading.Thread(target=self._show, name="mlstage-listing", daemon=True)
            self._thread.start()
        return self

    def _text(self) -> str:
        try:
            n = self.count()
        except Exception:  # noqa: BLE001 - a display never fails the listing
            n = None
        return f"listing {self.uri}" + ("" if n is None else f": {n:,} objects")

    def _show(self) -> None:
        if self._done.wait(self.delay):
            return
        from rich.console import Console

        console = self.console or Console(stderr=True)
        with console.status(self._text()) as status:
            while not self._done.wait(0.25):
                status.update(self._text())

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


class StepProgress:
    """A bar per phase of a long check (``phase``, done, total) on stderr, for terminals;
    ``update`` is the callback ``LocalCache.verify(on_progress=)`` takes."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._progress = None
        self._tasks: dict[str, object] = {}

    def __enter__(self) -> StepProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._progress = Progress(
                "{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
        return self

    def update(self, phase: str, done: int, total: int) -> None:
        if self._progress is None:
            return
        task = self._tasks.get(phase)
        if task is None:
            task = self._tasks[phase] = self._progress.add_task(f"checking {phase}", total=total)
        self._progress.update(task, completed=done, total=total)  # type: ignore[arg-type]

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
