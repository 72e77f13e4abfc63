"""Local or NFS folders: a path or file:// URI."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from mlstage.errors import ConfigError, ObjectNotFound, SourceError, UnsafePathError
from mlstage.manifest import Entry, Manifest, ManifestBuilder
from mlstage.paths import safe_relpath
from mlstage.sources.base import FileObjectSource, RemoteObject

CHUNK = 1024 * 1024


class _OpenFolders:
    """One thread's open descriptor of the folder it reads from, opened a component at a time
    below the root without following links: one ``openat`` a file, none of the ``realpath``
    calls that resolving each file's parents took (most of a small file's system calls)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_fd: int | None = None
        self._rel: str | None = None
        self._fd: int | None = None

    def fd(self, rel: str) -> int:
        """A descriptor of the folder ``rel`` below the root (``""``: the root)."""
        if rel == self._rel and self._fd is not None:
            return self._fd
        if self._root_fd is None:
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        self._drop()
        fd = self._root_fd
        for part in rel.split("/") if rel else ():
            opened = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            if fd != self._root_fd:
                os.close(fd)
            fd = opened
        self._rel, self._fd = rel, fd
        return fd

    def _drop(self) -> None:
        if self._fd is not None and self._fd != self._root_fd:
            os.close(self._fd)
        self._rel = self._fd = None

    def __del__(self) -> None:
        self._drop()
        if self._root_fd is not None:
            os.close(self._root_fd)


class FolderSource(FileObjectSource):
    """Every regular file below ``root``, hidden ones included; symlinks are refused, never
    followed, and so are FIFOs, sockets and devices."""

    local = True  # read in the consumer's thread, a file at a time (Transfer._copy_batches)

    def __init__(self, root: Path | str, *, uri: str | None = None) -> None:
        self.root = Path(root)
        self.uri = uri or str(self.root)
        self._local_state = threading.local()

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state.pop("_local_state", None)  # open descriptors stay with their process
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._local_state = threading.local()

    def resolve(self) -> Manifest:
        """List every file with one ``lstat`` each, in manifest order (the order of
        ``mlstage.folders.walk``: nothing is sorted after); a link, FIFO, socket or device is
        refused."""
        if not self.root.is_dir():
            if self.root.exists():
                raise ConfigError(
                    f"{self.uri}: not a folder",
                    hint="a dataset is a folder: give the folder that holds this file",
                )
            raise ObjectNotFound(
                f"{self.uri}: no such folder", hint="check the path; it must exist on this node"
            )
        builder = ManifestBuilder(self.uri)
        add_file = builder.add_file
        S_ISREG, S_ISDIR, S_ISLNK = stat.S_ISREG, stat.S_ISDIR, stat.S_ISLNK  # noqa: N806

        def visit(folder: str, prefix: str) -> None:  # one call a folder, manifest order
            entries = list(os.scandir(folder))
            entries.sort(key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                mode = st.st_mode
                rel = prefix + entry.name
                if S_ISREG(mode):
                    if "\\" in rel:  # a name the file system allows, a manifest does not
                        Entry(rel, st.st_size)  # raises the one error for it
                    add_file(rel, st.st_size, f"{st.st_size}-{st.st_mtime_ns}")
                elif S_ISDIR(mode):
                    visit(entry.path, rel + "/")
                elif S_ISLNK(mode):
                    raise UnsafePathError(
                        f"{self.uri}: refusing link {rel!r}",
                        hint="links could point outside the dataset; replace them with files",
                    )
                else:
                    raise UnsafePathError(
                        f"{self.uri}: refusing {rel!r}: not a regular file (FIFO, socket, device)",
                        hint="datasets hold regular files only; remove it from the folder",
                    )

        visit(str(self.root), "")
        if not len(builder):
            raise ObjectNotFound(
                f"{self.uri}: no files in this folder",
                hint="check the path; a dataset needs at least one file",
            )
        return builder.build()

    def _changed(self, obj: RemoteObject) -> SourceError:
        return SourceError(
            f"{self.uri}: {obj.key} changed since it was listed; re-resolve",
            hint="stage again once the folder is no longer being written",
        )

    def _open(self, obj: RemoteObject) -> int:
        """Open the listed file itself: never through a link swapped in since (every folder
        below the root and the file are opened without following links), never a FIFO or
        device, never a file that changed since it was listed."""
        parent, _, name = safe_relpath(obj.key).rpartition("/")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(name, flags, dir_fd=self._folders.fd(parent))
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePathError(
                    f"{self.uri}: refusing {obj.key!r}: it or a folder above it became a link "
                    "after listing",
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

    @property
    def _folders(self) -> _OpenFolders:
        """This thread's open folder (files are read folder by folder, in manifest order)."""
        folders = getattr(self._local_state, "folders", None)
        if folders is None:
            folders = self._local_state.folders = _OpenFolders(self.root)
        return folders

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
