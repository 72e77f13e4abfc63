from __future__ import annotations

import pytest

from mlstage.errors import ConfigError, UnsafePathError
from mlstage.manifest import Entry, Manifest, ManifestBuilder


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
    with pytest.raises(UnsafePathError):  # also when read from a file someone wrote
        Manifest.from_json(
            '{"mlstage_manifest": 2, "source": "s"}\n["a", 1, null, null, null]\n'
            '["a/b", 1, null, null, null]\n'
        )


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "C:\\x", "", "a\\b", "a\x00b"])
def test_unsafe_paths_refused(bad: str) -> None:
    with pytest.raises((UnsafePathError, ValueError)):
        entry(bad)


def test_roundtrip_json() -> None:
    m = Manifest(source="s3://b/p", entries=[entry("d/a.json", checksum="md5:00")])
    assert Manifest.from_json(m.to_json()) == m


def test_a_manifest_file_that_is_cut_or_foreign_is_refused_in_one_line() -> None:
    m = Manifest(source="s3://b/p", entries=[entry("a", etag="1"), entry("b", etag="2")])
    cut = "\n".join(m.to_json().splitlines()[:2])
    with pytest.raises(ConfigError, match="lists 1 entries, its header says 2"):
        Manifest.from_json(cut, origin="s3://b/x/manifest.json")
    with pytest.raises(ConfigError, match="not an mlstage manifest"):
        Manifest.from_json('{"source": "s", "entries": []}')
    with pytest.raises(ConfigError, match="line 2 is not a manifest entry"):
        Manifest.from_json('{"mlstage_manifest": 2, "source": "s"}\n["a"]\n')


def test_entries_come_from_columns_and_survive_pickling() -> None:
    import pickle

    entries = [
        Entry(path=f"d{i % 3}/f{i:04d}", size=i, etag=f"{i}-1", locator=f"k/{i}")
        for i in range(500)
    ]
    m = Manifest(source="/data", entries=entries)
    assert list(m.entries) == sorted(entries) and m.entries[-1] == max(entries)
    assert m.entries[10:12] == sorted(entries)[10:12]
    assert m.index("d1/f0001") == 167 and m.index("nope") is None
    assert pickle.loads(pickle.dumps(m)) == m
    assert m.nbytes() < 60 * len(m)  # columns, not an object per file


def test_a_large_manifest_stays_small_in_memory() -> None:
    """100,000 entries as a folder lists them: well under 200 bytes a file (target of the
    million-file issue), where a pydantic model per file took ~4 KB."""
    import tracemalloc

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    builder = ManifestBuilder("/data")
    for i in range(100_000):
        p = f"d{i // 1000:03d}/f{i:06d}.jpg"
        builder.add(Entry.trusted(p, 20_000 + i, None, f"{20_000 + i}-1733616000123456789", p))
    m = builder.build()
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    assert m.nbytes() / len(m) < 100, m.nbytes() / len(m)
    assert peak / len(m) < 200, peak / len(m)  # building it included


def _sha(i: int) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(b"%d" % i).hexdigest()


def test_sha256_checksums_are_held_as_bytes_and_fingerprint_as_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An artifact's checksums (all sha256) take 32 bytes an entry, and the manifest's
    version is the one its text would give: a manifest held either way is the same version."""
    import re

    entries = [entry(f"d/{i:05d}", checksum=_sha(i)) for i in range(5000)]
    compact = Manifest(source="/shared", entries=entries)
    assert compact.nbytes() < 60 * len(compact)
    assert compact.sha256_digests() == b"".join(bytes.fromhex(_sha(i)[7:]) for i in range(5000))
    assert [e.checksum for e in compact.entries] == [e.checksum for e in entries]
    assert Manifest.from_json(compact.to_json()) == compact

    monkeypatch.setattr("mlstage.manifest._SHA256_TEXT", re.compile(rb"(?!)"))  # text only
    as_text = Manifest(source="/shared", entries=entries)
    assert as_text.sha256_digests() is None and as_text.nbytes() > 90 * len(as_text)
    assert as_text.fingerprint == compact.fingerprint


@pytest.mark.parametrize(
    "checksums",
    [[_sha(1), "md5:00", None], [None, _sha(1)], ["md5:00", _sha(1)], [_sha(1), _sha(2).upper()]],
)
def test_any_other_checksum_keeps_the_column_as_text(checksums: list[str | None]) -> None:
    m = Manifest(source="/s", entries=[entry(f"f{i}", checksum=c) for i, c in enumerate(checksums)])
    assert m.sha256_digests() is None
    assert [e.checksum for e in m.entries] == checksums
    assert Manifest.from_json(m.to_json()) == m


def test_staging_an_artifact_confirms_its_listed_digests() -> None:
    from mlstage.cache.records import Digests
    from mlstage.errors import CacheError

    m = Manifest(source="/s", entries=[entry(f"f{i}", checksum=_sha(i)) for i in range(3)])
    digests = Digests.expecting(m)
    assert digests.first_missing() == 0
    digests.set(0, _sha(0)[7:])
    assert digests.first_missing() == 1 and digests[0] == _sha(0)[7:]
    with pytest.raises(CacheError, match="entry 1 arrived with sha256"):
        digests.set(1, _sha(2)[7:])


def test_sha256_is_that_of_the_json_text() -> None:
    import hashlib

    m = Manifest(source="/s", entries=[entry(f"d/é{i}", checksum=_sha(i)) for i in range(50)])
    assert m.sha256() == hashlib.sha256(m.to_json().encode()).hexdigest()
