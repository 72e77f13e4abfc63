"""Local or NFS folders: a path or file:// URI."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from mlstage.errors import ConfigError, ObjectNotFound, SourceError, UnsafePathError
from mlstage.manifest import Entry, Manifest
from mlstage.paths import join_inside
from mlstage.sources.base import FileObjectSource, RemoteObject

CHUNK = 1024 * 1024


class FolderSource(FileObjectSource):
    """Every regular file below ``root``, hidden ones included; symlinks are refused, never
    followed, and so are FIFOs, sockets and devices."""

    def __init__(self, root: Path | str, *, uri: str | None = None) -> None:
        self.root = Path(root)
        self.uri = uri or str(self.root)

    def resolve(self) -> Manifest:
        if not self.root.is_dir():
            if self.root.exists():
                raise ConfigError(
                    f"{self.uri}: not a folder",
                    hint="a dataset is a folder: give the folder that holds this file",
                )
            raise ObjectNotFound(
                f"{self.uri}: no such folder", hint="check the path; it must exist on this node"
            )
        entries: list[Entry] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in dirnames + filenames:
                full = Path(dirpath) / name
                if full.is_symlink():
                    rel = full.relative_to(self.root).as_posix()
                    raise UnsafePathError(
                        f"{self.uri}: refusing link {rel!r}",
                        hint="links could point outside the dataset; replace them with files",
                    )
            for name in sorted(filenames):  # every file, hidden ones too: what is there
                full = Path(dirpath) / name
                st = full.lstat()
                rel = full.relative_to(self.root).as_posix()
                if not stat.S_ISREG(st.st_mode):
                    raise UnsafePathError(
                        f"{self.uri}: refusing {rel!r}: not a regular file (FIFO, socket, device)",
                        hint="datasets hold regular files only; remove it from the folder",
                    )
                entries.append(
                    Entry(
                        path=rel,
                        size=st.st_size,
                        etag=f"{st.st_size}-{st.st_mtime_ns}",
                        locator=rel,
                    )
                )
        if not entries:
            raise ObjectNotFound(
                f"{self.uri}: no files in this folder",
                hint="check the path; a dataset needs at least one file",
            )
        return Manifest(source=self.uri, entries=entries)

    def _changed(self, obj: RemoteObject) -> SourceError:
        return SourceError(
            f"{self.uri}: {obj.key} changed since it was listed; re-resolve",
            hint="stage again once the folder is no longer being written",
        )

    def _open(self, obj: RemoteObject) -> int:
        """Open the listed file itself: never a link swapped in since, never a FIFO or device."""
        path = join_inside(self.root, obj.key)
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePathError(
                    f"{self.uri}: refusing {obj.key!r}: it became a link after listing",
                    hint="links could point outside the dataset; replace them with files",
                ) from exc
            raise
        st = os.fstat(fd)
        listed = obj.etag or ""
        if not stat.S_ISREG(st.st_mode) or (
            st.st_size != obj.size or (listed and listed != f"{st.st_size}-{st.st_mtime_ns}")
        ):
            os.close(fd)
            raise self._changed(obj)
        os.set_blocking(fd, True)
        return fd

    def read(self, obj: RemoteObject, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        try:
            with open(self._open(obj), "rb") as f:
                f.seek(start)
                remaining = (end if end is not None else obj.size) - start
                while remaining > 0:
                    chunk = f.read(min(CHUNK, remaining))
                    if not chunk:
                        raise self._changed(obj)
                    remaining -= len(chunk)
                    yield chunk
                if os.fstat(f.fileno()).st_size != obj.size:
                    raise self._changed(obj)
        except FileNotFoundError as exc:
            raise ObjectNotFound(
                f"{self.uri}: {obj.key} disappeared", hint="re-resolve the dataset"
            ) from exc
        except OSError as exc:
            raise SourceError(f"{self.uri}: cannot read {obj.key}: {exc.strerror}") from exc
