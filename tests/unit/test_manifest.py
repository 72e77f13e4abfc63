from __future__ import annotations

import pytest

from mlstage.errors import UnsafePathError
from mlstage.manifest import Entry, Manifest


def entry(path: str, size: int = 3, checksum: str | None = None, etag: str | None = None) -> Entry:
    return Entry(path=path, size=size, checksum=checksum, etag=etag, locator=path)


def test_fingerprint_ignores_order_and_locator() -> None:
    a = Manifest(source="s3://b/p", entries=[entry("a", etag="1"), entry("b", etag="2")])
    b = Manifest(source="/elsewhere", entries=[entry("b", etag="2"), entry("a", etag="1")])
    assert a.fingerprint == b.fingerprint
    assert [e.path for e in b.entries] == ["a", "b"]


@pytest.mark.parametrize(
    "change",
    [
        lambda: entry("a", etag="changed"),
        lambda: entry("a", size=4, etag="1"),
        lambda: entry("a2", etag="1"),
    ],
)
def test_fingerprint_changes_with_content(change) -> None:  # type: ignore[no-untyped-def]
    base = Manifest(source="x", entries=[entry("a", etag="1")])
    assert Manifest(source="x", entries=[change()]).fingerprint != base.fingerprint


def test_checksum_wins_over_etag() -> None:
    a = Manifest(source="x", entries=[entry("a", checksum="sha256:ab", etag="1")])
    b = Manifest(source="x", entries=[entry("a", checksum="sha256:ab", etag="2")])
    assert a.fingerprint == b.fingerprint


def test_duplicate_paths_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Manifest(source="x", entries=[entry("a"), entry("a")])


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "C:\\x", "", "a\\b", "a\x00b"])
def test_unsafe_paths_refused(bad: str) -> None:
    with pytest.raises((UnsafePathError, ValueError)):
        entry(bad)


def test_roundtrip_json() -> None:
    m = Manifest(source="s3://b/p", entries=[entry("d/a.json", checksum="md5:00")])
    assert Manifest.from_json(m.to_json()) == m
