"""Local or NFS folders: a path or file:// URI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from mlstage.errors import ObjectNotFound, SourceError, UnsafePathError
from mlstage.manifest import Entry, Manifest
from mlstage.paths import join_inside
from mlstage.sources.base import FileObjectSource, RemoteObject

CHUNK = 1024 * 1024


class FolderSource(FileObjectSource):
    """Every regular file below ``root``; symlinks are refused, never followed."""

    def __init__(self, root: Path | str, *, uri: str | None = None) -> None:
        self.root = Path(root)
        self.uri = uri or str(self.root)

    def resolve(self) -> Manifest:
        if not self.root.is_dir():
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
            for name in sorted(filenames):
                if name.startswith(".mlstage-"):
                    continue
                full = Path(dirpath) / name
                st = full.stat()
                rel = full.relative_to(self.root).as_posix()
                entries.append(
                    Entry(
                        path=rel,
                        size=st.st_size,
                        etag=f"{st.st_size}-{st.st_mtime_ns}",
                        locator=rel,
                    )
                )
        return Manifest(source=self.uri, entries=entries)

    def read(self, obj: RemoteObject, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = join_inside(self.root, obj.key)
        try:
            with open(path, "rb") as f:
                f.seek(start)
                remaining = (end if end is not None else obj.size) - start
                while remaining > 0:
                    chunk = f.read(min(CHUNK, remaining))
                    if not chunk:
                        return
                    remaining -= len(chunk)
                    yield chunk
        except FileNotFoundError as exc:
            raise ObjectNotFound(
                f"{self.uri}: {obj.key} disappeared", hint="re-resolve the dataset"
            ) from exc
        except OSError as exc:
            raise SourceError(f"{self.uri}: cannot read {obj.key}: {exc.strerror}") from exc
