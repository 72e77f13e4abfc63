"""The cache's files on disk: where each thing lives, locks that can be removed, the trash.

Layout under ``root`` (see ``mlstage.cache.local`` for what each part is for)::

    index.sqlite            the index (cache/index.py)
    objects/ab/abcdef...    each distinct content once, named by its sha256, read-only
    datasets/<fp>/          a complete dataset: a read-only tree of hard links into objects/
    manifests/<fp>.json     the manifest each dataset was built from, with each file's sha256
    manifests/<fp>.seal     what its tree's files and folders looked like (cache/seal.py)
    tmp/xfer-<fp>/          transfers in flight, resumable after a crash
    tmp/trash/              objects and trees being removed
    tmp/scratch-<id>/       work in progress beside the cache (a recipe's output), on its disk
    locks/                  flock files: stage-<fp>, lease-<fp>, evict

Every write the file system refuses because of the cache's disk (full, read-only, a quota)
becomes one ``CacheError`` line naming the file (``disk_error``), never a traceback.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlstage.errors import CacheError, MlstageError

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_SUBDIRS = ("objects", "datasets", "manifests", "tmp/trash", "locks")


class CacheFiles:
    """Paths of everything the cache at ``root`` keeps; made on first use."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects = str(self.root / "objects")
        self._made_dirs: set[str] = set()  # objects/<xx> folders known to exist
        try:
            for sub in _SUBDIRS:
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(
                f"cannot create the cache at {self.root}: {exc.strerror}",
                hint="set MLSTAGE_CACHE_DIR to a writable folder",
            ) from exc

    def object_path(self, digest: str) -> Path:
        return self.root / "objects" / digest[:2] / digest

    def object_str(self, digest: str) -> str:
        """``object_path`` as a string, without building a Path (the per-file hot path)."""
        return f"{self.objects}/{digest[:2]}/{digest}"

    def object_dir(self, digest: str) -> str:
        """The folder ``digest``'s object goes in, made if this process has not seen it yet."""
        parent = f"{self.objects}/{digest[:2]}"
        if parent not in self._made_dirs:
            os.makedirs(parent, exist_ok=True)
            self._made_dirs.add(parent)
        return parent

    def dataset_path(self, fingerprint: str) -> Path:
        return self.root / "datasets" / fingerprint

    def building_path(self, fingerprint: str) -> Path:
        """Where a dataset's tree is built before one rename publishes it."""
        return self.root / "datasets" / f".tmp-{fingerprint}"

    def manifest_path(self, fingerprint: str) -> Path:
        return self.root / "manifests" / f"{fingerprint}.json"

    def seal_path(self, fingerprint: str) -> Path:
        return self.root / "manifests" / f"{fingerprint}.seal"

    def transfer_dir(self, fingerprint: str) -> Path:
        return self.root / "tmp" / f"xfer-{fingerprint}"

    def lock(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    def trash(self, name: str) -> Path:
        """A unique name in the trash for ``name`` (``<kind>-<id>``; see ``Eviction.recover``)."""
        return self.root / "tmp" / "trash" / f"{name}.{os.getpid()}-{os.urandom(4).hex()}"


@contextmanager
def scratch(files: CacheFiles, purpose: str) -> Iterator[Path]:
    """An empty folder ``out`` on the cache's disk, removed after the block.

    Its parent ``tmp/scratch-...`` holds an flock while in use (taken before the folder gets
    the name ``gc`` looks for), so ``gc`` removes exactly the ones a killed process left, from
    any process or pod sharing the cache.
    """
    name = f"scratch-{purpose}-{os.getpid()}-{os.urandom(4).hex()}"
    making = files.root / "tmp" / f".{name}"
    making.mkdir()
    fd = os.open(making / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = files.root / "tmp" / name
        os.rename(making, path)
        try:
            (path / "out").mkdir()
            yield path / "out"
        finally:
            rmtree(path)
    finally:
        os.close(fd)


def remove_abandoned_scratch(path: Path) -> bool:
    """Remove a ``scratch`` folder whose maker is gone (its flock is free); True if removed.
    Its lock file is opened, never created: one that is missing is being removed by its maker."""
    try:
        fd = os.open(path / ".lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        rmtree(path)
        return True
    finally:
        os.close(fd)


@contextmanager
def flock(path: Path, mode: int) -> Iterator[bool]:
    """Hold an flock on ``path``; yields False (without the lock) if LOCK_NB was refused.

    Lock files may be removed (``remove_lock``) by a holder of the exclusive lock, so after
    locking, the file must still be the one at ``path``; otherwise the lock is taken again on
    the file that is there now.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # removed while we waited for it: lock the current one
    try:
        yield True
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def remove_lock(path: Path) -> None:
    """Remove a lock file; only while holding its exclusive flock (see ``flock``)."""
    path.unlink(missing_ok=True)


def move_tree(src: str | Path, dst: str | Path) -> None:
    """``os.rename`` a dataset tree (or a file) the cache made read-only.

    Moving a folder to another parent rewrites its ``..`` entry, which needs write permission
    on the folder itself: root skips that check, any other user is refused for a 0o555 folder.
    Then the folder is made writable for the move and given its mode back after it.
    """
    try:
        os.rename(src, dst)
        return
    except PermissionError:
        st = os.lstat(src)
        if not stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IWUSR:
            raise
    os.chmod(src, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
    try:
        os.rename(src, dst)
    except OSError:
        os.chmod(src, stat.S_IMODE(st.st_mode))
        raise
    os.chmod(dst, stat.S_IMODE(st.st_mode))


def rmtree(path: Path) -> None:
    """Remove a tree the cache made read-only (folders 0o555); raises OSError if it cannot."""
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        os.unlink(path)
        return
    for dirpath, dirnames, _files in os.walk(path):
        os.chmod(dirpath, 0o755)
        for name in dirnames:  # os.walk cannot list a folder it may not read
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, 0o755)
    shutil.rmtree(path)


def disk_error(root: Path, exc: BaseException) -> CacheError | None:
    """A write into the cache that its disk refused (full, read-only, a file of the cache it
    cannot make or open) as one line naming the file; None for any other error."""
    if isinstance(exc, MlstageError):  # a source's ObjectNotFound, AccessDenied: its own
        return None
    if isinstance(exc, sqlite3.Error):
        return _index_error(root, exc)
    if not isinstance(exc, OSError):
        return None
    mine = exc.filename is not None and Path(os.fsdecode(exc.filename)).is_relative_to(root)
    if exc.errno not in (*_DISK_FULL, errno.EROFS) and not mine:
        return None
    where = f" ({exc.filename})" if exc.filename else ""
    return CacheError(
        f"cannot write to the cache at {root}{where}: {exc.strerror or exc}",
        hint=_hint(exc.errno),
    )


def _index_error(root: Path, exc: sqlite3.Error) -> CacheError | None:
    code = getattr(exc, "sqlite_errorname", "") or ""
    known = {
        "SQLITE_FULL": errno.ENOSPC,
        "SQLITE_READONLY": errno.EROFS,
        "SQLITE_READONLY_DIRECTORY": errno.EROFS,
        "SQLITE_CANTOPEN": errno.EACCES,
        "SQLITE_IOERR": errno.EIO,
    }
    base = next((v for k, v in known.items() if code.startswith(k)), None)
    if base is None:
        return None
    return CacheError(
        f"cannot write to the cache index at {root / 'index.sqlite'}: {exc}", hint=_hint(base)
    )


def _hint(code: int | None) -> str:
    if code in _DISK_FULL:
        return "free space there, or cap the cache with MLSTAGE_CACHE_LIMIT_BYTES"
    if code == errno.EIO:
        return "the disk reported an I/O error; check it, then `mlstage cache verify`"
    return "check the cache folder is writable (MLSTAGE_CACHE_DIR)"


@contextmanager
def mapped_disk_errors(root: Path) -> Iterator[None]:
    """Turn the cache disk's refusals inside the block into one-line CacheErrors."""
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        mapped = disk_error(root, exc)
        if mapped is None:
            raise
        raise mapped from exc


def is_regular(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)
