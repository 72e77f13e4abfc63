"""``mlstage cache verify``: check every object and every dataset tree, and repair them.

Two modes. ``full`` (the default) hashes every object: it finds any damage, including bytes
changed without a trace in the file's metadata (bit rot, a write that set the mtime back).
Fast checks sizes and file metadata (each object's inode, size and mtime as recorded, each
tree against its seal) and hashes only files whose metadata changed. Both read each dataset's
record line by line beside a walk of its tree, holding one folder's listing and the list of
damaged objects: memory stays flat however many files a dataset has.

Repair re-stages each damaged dataset under its stage lock (``LocalCache.refetch``): sound
objects are kept, a changed file is hashed and kept if its bytes are right, anything else is
fetched again from the dataset's source, and the tree is rebuilt and sealed afresh. A dataset
without a manifest cannot be rebuilt: it is dropped once nobody uses it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlstage.cache.files import move_tree, rmtree
from mlstage.cache.records import read_record, stream_record
from mlstage.errors import CacheError, ConfigError, MlstageError
from mlstage.folders import walk
from mlstage.transfer import file_sha256

if TYPE_CHECKING:
    from mlstage.cache.local import LocalCache, SourceOpener
    from mlstage.manifest import Entry

Progress = Callable[[str, int, int], None]


@dataclass
class Problem:
    """One thing ``verify`` found wrong, and whether it was repaired."""

    kind: str  # corrupt_file, missing_file, extra_file, missing_tree, foreign_link, ...
    fingerprint: str | None
    path: str | None
    detail: str
    repaired: bool = False


@dataclass
class VerifyReport:
    """The outcome of ``LocalCache.verify``."""

    datasets: int = 0
    objects: int = 0
    files: int = 0
    bytes_hashed: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def unrepaired(self) -> list[Problem]:
        return [p for p in self.problems if not p.repaired]

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["ok"] = not self.unrepaired
        return d


def verify(
    cache: LocalCache,
    *,
    repair: bool,
    open_source: SourceOpener,
    workers: int,
    full: bool,
    on_progress: Progress | None = None,
) -> VerifyReport:
    """Check the cache (see the module docstring); repair what is wrong with ``repair``."""
    report = VerifyReport()
    bad = _check_objects(cache, report, full, on_progress)
    unfixable: list[Problem] = []
    rows = cache.index.datasets_lru()
    for n, row in enumerate(rows, 1):
        fp = row.fingerprint
        with cache.leases.reading(fp):
            if cache.index.dataset(fp) is None:
                continue  # evicted since the listing: nothing to check
            report.datasets += 1
            problems = _check_dataset(cache, fp, bad, full, report)
        report.problems.extend(problems)
        if problems and repair:
            unfixable += _repair_dataset(cache, fp, problems, bad, open_source, workers)
        if on_progress:
            on_progress("datasets", n, len(rows))
    for problem in unfixable:  # dropped once this check no longer holds them itself
        try:
            dropped = cache.drop(problem.fingerprint or "")
        except ConfigError:  # evicted meanwhile: gone all the same
            dropped = True
        if dropped:
            problem.repaired = True
            problem.detail += "; dropped it (the next stage fetches it again)"
        else:
            problem.detail += "; in use, so kept: repair again once it is released"
    for digest, kind in bad.items():
        if cache.index.datasets_using(digest) or not cache.index.has_object(digest):
            continue  # checked with its datasets, or evicted while we hashed
        problem = Problem(kind, None, cache.files.object_str(digest), "object no dataset uses")
        if repair:
            cache.eviction.delete_objects([digest])
            problem.repaired = True
        report.problems.append(problem)
    report.problems += _stray_objects(cache, repair)
    return report


def _check_objects(
    cache: LocalCache, report: VerifyReport, full: bool, on_progress: Progress | None
) -> dict[str, str]:
    """Every damaged object: digest -> corrupt_object or missing_object."""
    bad: dict[str, str] = {}
    total = cache.index.object_count()
    for batch in cache.index.iter_objects():
        for row in batch:
            report.objects += 1
            path = cache.files.object_str(row.digest)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                bad[row.digest] = "missing_object"
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size != row.size:
                bad[row.digest] = "corrupt_object"
                continue
            if full or not row.matches(st):
                report.bytes_hashed += st.st_size
                if file_sha256(Path(path)) != row.digest:
                    bad[row.digest] = "corrupt_object"
                elif not row.matches(st):  # only its metadata changed (touch): note it as is
                    with cache.index.tx() as db:
                        cache.index.set_identity(db, row.digest, st)
        if on_progress:
            on_progress("objects", report.objects, total)
    return bad


def _check_dataset(
    cache: LocalCache, fp: str, bad: dict[str, str], full: bool, report: VerifyReport
) -> list[Problem]:
    tree = cache.dataset_path(fp)
    row = cache.index.dataset(fp)
    if not full and not bad and row is not None and cache.trees.intact(fp):
        report.files += row.files  # as sealed, and no object damaged: nothing more to read
        return []
    missing_manifest = Problem(
        "missing_manifest", fp, str(cache.manifest_path(fp)), "cannot check or repair this dataset"
    )
    try:
        rows = stream_record(cache.manifest_path(fp))
        if rows is None:
            return [missing_manifest]
        if not tree.is_dir() or tree.is_symlink():
            return [Problem("missing_tree", fp, None, "dataset folder is gone")]
        intact = cache.trees.intact(fp)
        if intact and not full:  # sealed: only entries whose object is damaged need a look
            files = 0
            damaged = False
            for _entry, digest in rows:
                files += 1
                damaged = damaged or digest in bad
            if not damaged:
                report.files += files
                return []
            rows = stream_record(cache.manifest_path(fp))
            if rows is None:
                return [missing_manifest]
        problems = _check_tree(cache, fp, tree, rows, bad, report)
    except CacheError:
        return [missing_manifest]
    except _ForeignLink:
        # mlstage never puts links in a tree; one that appeared could point anywhere, so the
        # tree is set aside (links removed, never followed) and rebuilt from objects
        return [
            Problem("foreign_link", fp, None, "the tree contains a link; it is rebuilt, not read")
        ]
    if not problems and not intact:  # every file checked: only metadata changed (touch)
        with cache.stage_lock(fp):
            cache.trees.reseal(fp)
    return problems


class _ForeignLink(Exception):
    """The tree holds something that is neither a file nor a folder."""


def _tree_files(tree: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Each file of ``tree`` (relative path, lstat) in path order; raises _ForeignLink."""
    for _path, rel, st in walk(str(tree)):
        if stat.S_ISREG(st.st_mode):
            yield rel, st
        elif not stat.S_ISDIR(st.st_mode):
            raise _ForeignLink(rel)


def _check_tree(
    cache: LocalCache,
    fp: str,
    tree: Path,
    rows: Iterator[tuple[Entry, str]],
    bad: dict[str, str],
    report: VerifyReport,
) -> list[Problem]:
    """Every file of the tree against the record, both read in path order side by side (one
    line of the record and one folder's listing held at a time, whatever the size)."""
    problems: list[Problem] = []
    pending: list[tuple[Entry, str, os.stat_result]] = []

    def check_pending() -> None:  # a thousand entries' object rows at a time
        objects = cache.index.object_rows(d for _e, d, _st in pending)
        for e, d, st in pending:
            row = objects.get(d)
            if row is not None and st.st_ino == row.ino:  # the object's own file: hashed above
                if bad.get(d) == "corrupt_object":
                    problems.append(
                        Problem("corrupt_file", fp, e.path, "content does not match its sha256")
                    )
                continue
            report.bytes_hashed += st.st_size
            if st.st_size != e.size or file_sha256(tree / e.path) != d:
                problems.append(
                    Problem("corrupt_file", fp, e.path, "content does not match its sha256")
                )
            elif bad.get(d) == "missing_object":
                problems.append(Problem("missing_object", fp, e.path, "object file is missing"))
        pending.clear()

    files = _tree_files(tree)
    here = next(files, None)
    for entry, digest in rows:
        while here is not None and here[0] < entry.path:
            problems.append(Problem("extra_file", fp, here[0], "a file the manifest does not list"))
            here = next(files, None)
        report.files += 1
        if here is None or here[0] != entry.path:
            problems.append(Problem("missing_file", fp, entry.path, "file is missing"))
            continue
        pending.append((entry, digest, here[1]))
        here = next(files, None)
        if len(pending) >= 1000:
            check_pending()
    check_pending()
    while here is not None:
        problems.append(Problem("extra_file", fp, here[0], "a file the manifest does not list"))
        here = next(files, None)
    return problems


def _repair_dataset(
    cache: LocalCache,
    fp: str,
    problems: list[Problem],
    bad: dict[str, str],
    open_source: SourceOpener,
    workers: int,
) -> list[Problem]:
    """Repair one dataset; returns the problems only dropping it can fix (no manifest)."""
    if problems[0].kind == "missing_manifest":
        return problems
    record = read_record(cache.manifest_path(fp))
    assert record is not None  # checked just before, under the same dataset's lease
    manifest, digests = record
    tree = cache.dataset_path(fp)
    try:
        if problems[0].kind == "foreign_link":
            aside = cache.files.trash(f"tree-{fp}")
            with cache.stage_lock(fp):
                move_tree(tree, aside)
            rmtree(aside)
        for p in problems:  # an object whose only good copy is a tree file: take it back
            i = manifest.index(p.path) if p.path is not None else None
            if p.kind == "missing_object" and i is not None:
                digest = digests[i]
                if cache.objects.restore(digest, tree / p.path):
                    bad.pop(digest, None)
        for digest in {d for d in digests if d in bad}:  # never reused: fetched again
            _set_aside(cache, digest)
        cache.refetch(open_source(manifest.source), manifest, workers=workers)
        fixed = {d for d in digests if d in bad and cache.objects.sound(d)}
        for d in fixed:
            bad.pop(d)
    except (MlstageError, OSError) as exc:
        for p in problems:
            p.detail += f"; repair failed: {exc}"
        return []
    for p in problems:
        p.repaired = True
    return []


def _set_aside(cache: LocalCache, digest: str) -> None:
    """Move a damaged object's file out of the way (its row stays, so nothing links it until
    a verified copy replaces it). Named so that trash recovery removes it, never restores it."""
    with suppress(FileNotFoundError):
        os.rename(cache.files.object_str(digest), cache.files.trash(f"bad-{digest}"))


def _stray_objects(cache: LocalCache, repair: bool) -> list[Problem]:
    """Object files the index does not know (a crash between placing and recording)."""
    problems = []
    for sub in os.scandir(cache.files.objects):
        if not sub.is_dir():
            continue
        for item in os.scandir(sub.path):
            if cache.index.has_object(item.name):
                continue
            problem = Problem(
                "stray_object", None, item.path, "object file the index does not know"
            )
            if repair:
                with cache.index.tx():  # an ingest places its file inside its transaction
                    if not cache.index.has_object(item.name):
                        Path(item.path).unlink(missing_ok=True)
                problem.repaired = True
            problems.append(problem)
    return problems
