"""Progress for humans: the listing counter shows only for listings that take time."""

from __future__ import annotations

import io
import threading

from rich.console import Console

from mlstage.progress import ListingStatus


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=100), out


def test_a_slow_listing_shows_its_count() -> None:
    console, out = _console()
    listed = [0]
    shown = threading.Event()

    def count() -> int:
        if listed[0] >= 3000:
            shown.set()
        return listed[0]

    with ListingStatus("s3://b/p/", count, delay=0.05, console=console):
        for _ in range(3):
            listed[0] += 1000
        assert shown.wait(5)  # the display read the latest count
    assert "listing s3://b/p/: 3,000 objects" in out.getvalue()


def test_a_quick_listing_prints_nothing() -> None:
    console, out = _console()
    with ListingStatus("s3://b/p/", lambda: 5, delay=10, console=console):
        pass
    assert out.getvalue() == ""


def test_sources_without_a_counter_show_the_uri_only() -> None:
    console, out = _console()
    seen = threading.Event()

    def count() -> None:
        seen.set()

    with ListingStatus("https://h/s-{0..9}.tar", count, delay=0.01, console=console):
        assert seen.wait(5)
    assert "listing https://h/s-{0..9}.tar" in out.getvalue()
    assert "objects" not in out.getvalue()


def test_disabled_never_starts() -> None:
    console, out = _console()
    with ListingStatus("s3://b/", lambda: 1, enabled=False, delay=0, console=console) as status:
        assert status._thread is None
    assert out.getvalue() == ""
