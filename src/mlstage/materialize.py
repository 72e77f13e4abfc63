"""Put a staged dataset at a user's folder: private copies (or hard links), all or nothing.

``Materializer`` can start before staging ends. The fetch engine writes a second copy of each
object straight into its folder as it downloads it (``mirror``, passed as
``LocalCache.stage(mirror=)``), so a private copy costs no second pass over the cache's file;
objects it could not mirror are copied as soon as the cache holds them (``add``, from the
per-object callback), overlapping the rest of the transfer. ``finish`` copies whatever was not
added (cache hits, or a copy that failed) from the cache's objects, entry by entry as the
manifest lists them (``LocalCache.staged_files``): nothing a folder holds besides is copied,
no link is followed, and each file must have the size its entry lists. Then it renames the
folder into place. Until then everything lives in a hidden sibling folder, made on the first
file, that ``abort`` (or an exception or SIGTERM in the ``with`` block) removes.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from mlstage.errors import CacheError, ConfigError
from mlstage.fileio import can_reflink, copy_file, pwrite_all

if TYPE_CHECKING:
    from mlstage.manifest import Entry

_DONE: Future[None] = Future()
_DONE.set_result(None)
_TO_HINT = "choose an empty or new folder on a writable filesystem for --to"


def check_destination(dest: Path) -> None:
    """Refuse a --to folder that is not empty or cannot be written, before any byte moves."""
    try:
        if dest.is_symlink():
            raise ConfigError(f"{dest} is a link", hint=_TO_HINT)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise ConfigError(f"{dest} exists and is not an empty folder", hint=_TO_HINT)
        parent = dest.absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        pseudo = parent.resolve().parts[1:2] in (("proc",), ("sys",), ("dev",))
    except OSError as exc:
        raise ConfigError(
            f"{dest}: cannot inspect it ({exc.strerror or exc})", hint=_TO_HINT
        ) from exc
    if pseudo or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{dest}: cannot create it in {parent}", hint=_TO_HINT)


def _copy(src: str, dst: str) -> None:
    copy_file(src, dst)  # a reflink where the filesystem can
    os.chmod(dst, 0o644)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        _copy(src, dst)


class MirrorFile:
    """The second copy of one object at the --to folder, written by the fetch engine at the
    offsets it writes the cache's copy (``Transfer(mirror=)``).

    Opened on its first write, so only objects being fetched hold a descriptor. Best effort:
    the first OSError (a full disk, a removed folder, an error reported at close) ends the copy
    and removes its file, and the fetch goes on; the consumer then copies the file from the
    cache. The descriptor stays open until ``close`` so that concurrent part writers never
    write to a reused descriptor number.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.ok = True
        self.fd: int | None = None
        self._lock = threading.Lock()

    def _open(self) -> int | None:
        with self._lock:
            if self.fd is None and self.ok:
                try:
                    self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                except OSError:
                    self.ok = False
            return self.fd

    def write(self, data: bytes, pos: int) -> None:
        fd = self.fd if self.fd is not None else self._open()
        if self.ok and fd is not None:
            try:
                pwrite_all(fd, data, pos)
            except OSError:
                self.fail()

    def fail(self) -> None:
        self.ok = False

    def close(self) -> bool:
        """Close it; True if it was written (an empty object: created) and no write failed."""
        if self.fd is None and self.ok:
            self._open()  # a zero-byte object has no write to open it
        with self._lock:
            if self.fd is not None:
                try:
                    os.close(self.fd)  # NFS and FUSE report ENOSPC, EDQUOT, EIO here
                except OSError:
                    self.ok = False
                self.fd = None
        if not self.ok:
            with suppress(OSError):
                os.unlink(self.path)
        return self.ok


class Materializer:
    """Builds ``dest`` from staged files on ``workers`` threads (their I/O releases the GIL).

    Hard links (``link``) share the cache's read-only files: writing through them would
    corrupt the cache, so they are opt-in. ``clone_from`` is a folder on the cache's
    filesystem: where files reflink from there to ``dest`` (btrfs, XFS), copies are clones and
    ``mirror`` declines, since a second write would cost more than a clone.
    """

    def __init__(
        self,
        dest: Path,
        *,
        link: bool = False,
        workers: int = 8,
        clone_from: Path | None = None,
    ) -> None:
        check_destination(dest)
        self.dest = Path(os.path.abspath(dest))  # "." and ".." have no name to put beside
        self._link = link
        self._place = _link_or_copy if link else _copy
        self._tmp = self.dest.with_name(
            f".{self.dest.name}.mlstage-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self._made = False
        self._closed = False
        self._clone_from = clone_from
        self._reflinks: bool | None = None  # probed on the first mirror()
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="mlstage-copy")
        self._early: dict[str, Future[None]] = {}
        self._dirs: set[str] = set()
        self._lock = threading.Lock()

    def _make_tmp(self) -> None:
        """The hidden folder, on the first file: a failed staging leaves no folder behind."""
        with self._lock:
            if self._closed:  # aborted: a late fetch thread must not bring the folder back
                raise OSError(errno.ECANCELED, "materialising was aborted", str(self._tmp))
            if not self._made:
                self.dest.parent.mkdir(parents=True, exist_ok=True)
                os.mkdir(self._tmp, 0o755)
                self._made = True

    def __enter__(self) -> Materializer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None:
            self.abort()

    def mirror(self, entry: Entry) -> MirrorFile | None:
        """The second copy of ``entry`` the fetch engine may write (``Transfer(mirror=)``).

        Private copies then cost no second pass over the cache's file. None with ``link``
        (links are made from the cache) or when the folder cannot be made (``finish`` says
        why). Thread-safe: the fetch threads call it.
        """
        if self._link or self._reflinks:
            return None
        try:
            self._make_tmp()
            if self._reflinks is None:
                with self._lock:
                    if self._reflinks is None:
                        clone_from = self._clone_from
                        self._reflinks = clone_from is not None and can_reflink(
                            str(clone_from), str(self._tmp)
                        )
                if self._reflinks:
                    return None
            self._make_parent(entry.path)
        except OSError:
            return None
        return MirrorFile(os.path.join(self._tmp, entry.path))

    def add(self, rel: str, src: str | Path, *, mirrored: bool = False) -> None:
        """Place the verified file ``src`` at ``rel`` (a dataset path) now.

        ``mirrored``: the fetch engine already wrote the same bytes there (``mirror``).
        Called from one thread (the consumer of the cache's callbacks); the copy runs on the
        pool. ``finish`` keeps what an early copy placed and redoes one that failed.
        """
        if mirrored:
            try:
                os.chmod(os.path.join(self._tmp, rel), 0o644)  # as a copy's, whatever the umask
                self._early[rel] = _DONE
                return
            except OSError:
                pass  # copy it after all
        try:
            self._make_tmp()
        except OSError:
            return  # finish() tries again and reports it
        self._early[rel] = self._pool.submit(self._place_at, rel, str(src))

    def finish(self, files: Iterable[tuple[Entry, Path]]) -> None:
        """Complete the folder with every entry of ``files`` (each dataset entry and the
        cache file holding its bytes, as ``LocalCache.staged_files`` lists them) and move it
        to ``dest``. A cache file that is not a regular file of its entry's size is an error,
        and nothing is left at ``dest``."""
        try:
            self._make_tmp()
            wait(list(self._early.values()))
            placed = {rel for rel, f in self._early.items() if f.exception() is None}
            rest = []
            for entry, src in files:
                if entry.path in placed:
                    continue
                if entry.path in self._early:  # its early copy failed: start over
                    with suppress(FileNotFoundError):
                        os.unlink(os.path.join(self._tmp, entry.path))
                rest.append(self._pool.submit(self._place_checked, entry.path, entry.size, src))
            for f in rest:
                f.result()  # re-raises the first error
            self._pool.shutdown()
            if self.dest.exists():
                self.dest.rmdir()
            os.rename(self._tmp, self.dest)
        except OSError as exc:
            self.abort()
            raise self._error(exc) from exc
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop and remove everything placed so far; ``dest`` is left as it was."""
        with self._lock:
            self._closed = True
            made = self._made
        self._pool.shutdown(wait=True, cancel_futures=True)
        if made:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _place_at(self, rel: str, src: str) -> None:
        self._make_parent(rel)
        self._place(src, os.path.join(self._tmp, rel))

    def _place_checked(self, rel: str, size: int, src: Path) -> None:
        """Place ``src`` at ``rel`` if it is a regular file of ``size`` bytes (never a link)."""
        st = os.lstat(src)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            what = "a link" if stat.S_ISLNK(st.st_mode) else f"{st.st_size} bytes"
            raise CacheError(
                f"{src}: the cache file for {rel} is {what}, its manifest lists {size} bytes",
                hint="run `mlstage cache verify --repair`, then stage again",
            )
        self._place_at(rel, str(src))

    def _make_parent(self, rel: str) -> None:
        """The folders above ``rel`` inside the hidden folder, never the hidden folder itself
        (after an abort, a late fetch thread gets FileNotFoundError, not a new folder)."""
        parent = rel.rpartition("/")[0]
        if not parent or parent in self._dirs:
            return
        path = str(self._tmp)
        for part in parent.split("/"):
            path = os.path.join(path, part)
            with suppress(FileExistsError):
                os.mkdir(path, 0o755)
        with self._lock:
            self._dirs.add(parent)

    def _error(self, exc: OSError) -> ConfigError:
        return ConfigError(
            f"{self.dest}: cannot materialise the dataset there ({exc.strerror or exc})",
            hint=_TO_HINT,
        )


def materialize(
    files: Iterable[tuple[Entry, Path]], dest: Path, *, link: bool = False, workers: int = 8
) -> None:
    """Put a staged dataset's ``files`` (``LocalCache.staged_files``) at ``dest`` atomically:
    private copies, or hard links."""
    Materializer(dest, link=link, workers=workers).finish(files)
