from __future__ import annotations

import pytest

from mlstage.errors import UnsafePathError
from mlstage.manifest import Entry, Manifest


def entry(path: str, size: int = 3, checksum: str | None = None, etag: str | None = None) -> Entry:
    return Entry(path=path, size=size, checksum=checksum, etag=etag, locator=path)


def test_fingerprint_ignores_order_and_locator() -> None:
    a = Manifest(source="s3://b/p", entries=[entry("a", etag="1"), entry("b", etag="2")])
    b = Manifest(source="s3://b/p", entries=[entry("b", etag="2"), entry("a", etag="1")])
    assert a.fingerprint == b.fingerprint
    assert [e.path for e in b.entries] == ["a", "b"]


def test_checksummed_fingerprint_is_source_independent() -> None:
    sums = [entry("a", checksum="sha256:ab"), entry("b", checksum="md5:cd")]
    a = Manifest(source="s3://b/p", entries=sums)
    assert a.fingerprint == Manifest(source="/elsewhere", entries=sums).fingerprint


@pytest.mark.parametrize("tag", [{}, {"etag": "1"}, {"checksum": "crc32:ab"}])
def test_unchecksummed_fingerprint_depends_on_source(tag: dict[str, str]) -> None:
    # two servers with s-0.tar of the same size (no ETag) are two datasets, not one
    e = [Entry(path="s-0.tar", size=3, locator="s-0.tar", **tag)]
    a = Manifest(source="http://one/s-{0..0}.tar", entries=e)
    assert a.fingerprint != Manifest(source="http://two/s-{0..0}.tar", entries=e).fingerprint
    # credentials never make a different version (nor are hashed)
    b = Manifest(source="http://u:pw@one/s-{0..0}.tar", entries=e)
    assert a.fingerprint == b.fingerprint


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
    with pytest.raises(UnsafePathError, match="both stage as 'a'"):
        Manifest(source="x", entries=[entry("a"), entry("a")])


def test_paths_equal_after_normalisation_refused_naming_both() -> None:
    e = [Entry(path=k, size=1, locator=k) for k in ("x/y", "x//y")]
    with pytest.raises(UnsafePathError, match=r"'x/y' and 'x//y' in s3://b/ both stage as 'x/y'"):
        Manifest(source="s3://b/", entries=e)


def test_file_that_is_also_a_folder_refused_naming_both() -> None:
    e = [Entry(path=k, size=1, locator=f"p/{k}") for k in ("a", "a/b/c", "z")]
    with pytest.raises(UnsafePathError, match=r"'p/a' in s3://b/ is a file and also .*'p/a/b/c'"):
        Manifest(source="s3://b/", entries=e)
    with pytest.raises(UnsafePathError):
        Manifest.from_json(
            '{"source": "s", "entries": [{"path": "a", "size": 1, "locator": "a"},'
            ' {"path": "a/b", "size": 1, "locator": "a/b"}]}'
        )


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "C:\\x", "", "a\\b", "a\x00b"])
def test_unsafe_paths_refused(bad: str) -> None:
    with pytest.raises((UnsafePathError, ValueError)):
        entry(bad)


def test_roundtrip_json() -> None:
    m = Manifest(source="s3://b/p", entries=[entry("d/a.json", checksum="md5:00")])
    assert Manifest.from_json(m.to_json()) == m
