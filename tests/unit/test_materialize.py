"""--to folders: early copies overlap staging, the rest come from the cache entry by entry as
the manifest lists them, all or nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlstage.cache import LocalCache
from mlstage.errors import CacheError, ConfigError
from mlstage.manifest import Entry
from mlstage.materialize import Materializer, materialize
from mlstage.sources import open_source


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def _count_copies(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The destinations of every copy the Materializer makes from now on."""
    import mlstage.materialize as mat

    copied: list[str] = []
    real_copy = mat.copy_file
    monkeypatch.setattr(mat, "copy_file", lambda s, d: (copied.append(d), real_copy(s, d)))
    return copied


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


class Staged:
    """A staged dataset: its tree (read-only hard links into objects/), what it holds, and
    the entries with their cache files as ``--to`` gets them."""

    def __init__(self, cache: LocalCache, fingerprint: str, files: dict[str, bytes]) -> None:
        self.cache = cache
        self.fingerprint = fingerprint
        self.tree = cache.dataset_path(fingerprint)
        self.files = files

    def listing(self) -> list[tuple[Entry, Path]]:
        return list(self.cache.staged_files(self.fingerprint))


@pytest.fixture
def staged(tmp_path: Path) -> Staged:
    src = tmp_path / "src"
    files = {"a.bin": b"a" * 100, "sub/b.bin": b"b" * 50, "sub/deeper/c.txt": b"c", "e": b""}
    _write_tree(src, files)
    source = open_source(str(src))
    cache = LocalCache(tmp_path / "cache")
    result = cache.stage(source, source.resolve())
    return Staged(cache, result.fingerprint, files)


def test_early_copies_and_the_rest_from_the_cache(staged: Staged, tmp_path: Path) -> None:
    tree, files = staged.tree, staged.files
    dest = tmp_path / "out" / "data"
    with Materializer(dest) as placing:
        placing.add("a.bin", tree / "a.bin")  # as the cache's per-object callback does
        placing.add("sub/deeper/c.txt", tree / "sub/deeper/c.txt")
        placing.add("sub/b.bin", tmp_path / "vanished")  # an early copy that fails: redone
        assert not dest.exists()  # nothing visible before finish
        placing.finish(staged.listing())
    assert _files(dest) == files
    assert not list(dest.parent.glob(".data.mlstage-tmp-*"))
    (dest / "a.bin").write_bytes(b"mine")  # private copies: the cache is untouched
    assert (tree / "a.bin").read_bytes() == b"a" * 100


def test_what_an_early_copy_placed_is_kept(staged: Staged, tmp_path: Path) -> None:
    files = staged.files
    marked = tmp_path / "marked"
    marked.write_bytes(b"from the early copy")  # distinguishable from the tree's a.bin
    with Materializer(tmp_path / "out") as placing:
        placing.add("a.bin", marked)
        placing.finish(staged.listing())
    got = _files(tmp_path / "out")
    assert got.pop("a.bin") == b"from the early copy"  # not copied a second time
    assert got == {k: v for k, v in files.items() if k != "a.bin"}


def test_dot_is_a_destination_like_any_other(
    staged: Staged, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    materialize(staged.listing(), Path("."))
    assert _files(tmp_path / "here") == staged.files


def test_links_share_the_cache_files(staged: Staged, tmp_path: Path) -> None:
    materialize(staged.listing(), tmp_path / "linked", link=True)
    assert _files(tmp_path / "linked") == staged.files
    assert os.stat(tmp_path / "linked" / "a.bin").st_ino == os.stat(staged.tree / "a.bin").st_ino


def test_a_failure_leaves_nothing(staged: Staged, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError), Materializer(dest) as placing:
        placing.add("a.bin", staged.tree / "a.bin")
        raise RuntimeError("staging failed")
    assert list(tmp_path.glob("*out*")) == []
    vanished = [(Entry(path="gone.bin", size=3, locator="gone.bin"), tmp_path / "nowhere")]
    with pytest.raises(ConfigError, match=r"out: cannot materialise the dataset there"):
        materialize(staged.listing() + vanished, dest)
    assert list(tmp_path.glob("*out*")) == []


@pytest.mark.parametrize("damage", ["link", "truncated"])
def test_a_cache_file_that_is_not_what_the_manifest_lists_is_never_placed(
    staged: Staged, tmp_path: Path, damage: str
) -> None:
    """--to copies the manifest's entries from the cache's objects, checked one by one: a link
    is never followed (nor linked), a file of another size never copied."""
    secret = tmp_path / "host-file"
    secret.write_bytes(b"not the dataset's")
    listing = staged.listing()
    entry, obj = listing[0]
    os.chmod(obj.parent, 0o755)
    obj.unlink()
    if damage == "link":
        obj.symlink_to(secret)
    else:
        obj.write_bytes(b"short")
    for link in (False, True):
        with pytest.raises(CacheError, match=f"cache file for {entry.path} is"):
            materialize(listing, tmp_path / "out", link=link)
        assert not (tmp_path / "out").exists()


def test_a_non_empty_destination_is_refused_before_anything(staged: Staged, tmp_path: Path) -> None:
    dest = tmp_path / "full"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty folder"):
        Materializer(dest)
    assert _files(dest) == {"keep.txt": b"mine"}
    assert list(tmp_path.glob(".full.*")) == []


def test_staging_with_a_mirror_copies_nothing_a_second_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fetch writes each private copy (``mirror``); only cache hits are copied after."""

    src = tmp_path / "src"
    files = {"a.bin": os.urandom(5000), "sub/b.bin": os.urandom(70_000), "c": b""}
    _write_tree(src, files)
    copied = _count_copies(monkeypatch)
    cache = LocalCache(tmp_path / "cache")
    source = open_source(str(src))

    def stage_to(dest: Path) -> None:
        with Materializer(dest) as placing:
            staged = cache.stage(
                source,
                source.resolve(),
                mirror=placing.mirror,
                on_object=lambda f: placing.add(
                    f.entry.path, cache.object_path(f.digest), mirrored=f.mirrored
                ),
            )
            placing.finish(cache.staged_files(staged.fingerprint))

    old_umask = os.umask(0o077)  # a copy is 0644 whatever the umask, so is a mirrored file
    try:
        stage_to(tmp_path / "first")
    finally:
        os.umask(old_umask)
    assert _files(tmp_path / "first") == files
    assert copied == []  # every file was written by the fetch itself
    assert all((tmp_path / "first" / rel).stat().st_mode & 0o777 == 0o644 for rel in files)
    assert all((tmp_path / "first" / rel).stat().st_nlink == 1 for rel in files)
    stage_to(tmp_path / "again")  # a cache hit: nothing fetched, so everything is copied
    assert _files(tmp_path / "again") == files
    assert len(copied) == len(files)


def test_links_are_never_mirrored(tmp_path: Path) -> None:
    from mlstage.manifest import Entry

    with Materializer(tmp_path / "out", link=True) as placing:
        assert placing.mirror(Entry(path="a", size=1, locator="a")) is None
        placing.abort()


def test_a_mirrored_file_that_is_missing_is_copied(staged: Staged, tmp_path: Path) -> None:
    with Materializer(tmp_path / "out") as placing:
        placing.add("a.bin", staged.tree / "a.bin", mirrored=True)  # claimed, never written
        placing.finish(staged.listing())
    assert _files(tmp_path / "out") == staged.files


def test_where_reflinks_work_the_fetch_writes_no_second_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlstage.materialize as mat
    from mlstage.manifest import Entry

    probes: list[tuple[str, str]] = []
    monkeypatch.setattr(mat, "can_reflink", lambda a, b: probes.append((a, b)) or True)
    entry = Entry(path="sub/a", size=1, locator="a")
    with Materializer(tmp_path / "out", clone_from=tmp_path) as placing:
        assert placing.mirror(entry) is None  # copies will be clones of the cache's files
        assert placing.mirror(entry) is None
        placing.abort()
    assert len(probes) == 1 and probes[0][0] == str(tmp_path)

    monkeypatch.setattr(mat, "can_reflink", lambda a, b: False)
    with Materializer(tmp_path / "out2", clone_from=tmp_path) as placing:
        copy = placing.mirror(entry)
        assert copy is not None and copy.path == str(placing._tmp / "sub" / "a")
        placing.abort()


def test_after_abort_a_late_fetch_thread_cannot_bring_the_folder_back(tmp_path: Path) -> None:
    from mlstage.manifest import Entry

    placing = Materializer(tmp_path / "out")
    assert placing.mirror(Entry(path="a/b", size=1, locator="a/b")) is not None
    placing.abort()
    assert placing.mirror(Entry(path="c/d", size=1, locator="c/d")) is None
    assert list(tmp_path.iterdir()) == []


def test_stage_to_writes_copies_while_fetching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mlstage stage --to` wires the mirror: a fresh staging copies no file afterwards."""
    import json

    from typer.testing import CliRunner

    from mlstage.cli import app

    monkeypatch.setenv("MLSTAGE_HOME", str(tmp_path / "home"))
    src = tmp_path / "src"
    files = {"a.bin": os.urandom(3000), "sub/b.bin": os.urandom(40_000)}
    _write_tree(src, files)
    copied = _count_copies(monkeypatch)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["stage", str(src), "--to", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["files"] == 2
    assert _files(out) == files and copied == []


@pytest.mark.parametrize(
    "args", [["--link"], ["--workers", "0"], ["--workers", "257"]], ids=["link", "w0", "w257"]
)
def test_stage_usage_errors_stage_nothing(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--link without --to, and --workers outside MLSTAGE_WORKERS' 1-256, are usage errors."""
    from typer.testing import CliRunner

    from mlstage.cli import app

    monkeypatch.setenv("MLSTAGE_HOME", str(tmp_path / "home"))
    _write_tree(tmp_path / "src", {"a.bin": b"a"})
    res = CliRunner().invoke(app, ["stage", str(tmp_path / "src"), *args])
    assert res.exit_code == 2, res.output
    assert not (tmp_path / "home" / "cache").exists() or not any(
        (tmp_path / "home" / "cache").rglob("a.bin")
    )


def test_stage_to_keeps_the_dataset_leased_until_the_copy_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process evicting between the staging and the copy cannot empty --to DIR."""
    from typer.testing import CliRunner

    from mlstage.cli import app
    from mlstage.settings import get_settings

    monkeypatch.setenv("MLSTAGE_HOME", str(tmp_path / "home"))
    files = {"a.bin": os.urandom(3000), "b.bin": os.urandom(5000)}
    _write_tree(tmp_path / "src", files)
    assert CliRunner().invoke(app, ["stage", str(tmp_path / "src")]).exit_code == 0  # a hit next
    finish = Materializer.finish
    evicted: list[str] = []

    def evicted_meanwhile(self: Materializer, listing: list[tuple[Entry, Path]]) -> None:
        evicted.extend(LocalCache(get_settings().resolved_cache_dir).evict(target_bytes=0))
        finish(self, listing)

    monkeypatch.setattr(Materializer, "finish", evicted_meanwhile)
    res = CliRunner().invoke(app, ["stage", str(tmp_path / "src"), "--to", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert evicted == [] and _files(tmp_path / "out") == files  # before: an empty folder, exit 0


def test_a_dataset_that_vanished_is_an_error_not_an_empty_folder(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "cache")
    with pytest.raises(CacheError, match="has no manifest"):
        materialize(cache.staged_files("0" * 64), tmp_path / "out")
    assert not (tmp_path / "out").exists()
