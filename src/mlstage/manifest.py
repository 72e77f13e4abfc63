"""Manifest: the exact listing of a dataset version; its fingerprint is the version."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mlstage.errors import MlstageError, UnsafePathError
from mlstage.paths import check_fits, safe_relpath

MANIFEST_FORMAT = 1
_CONTENT_ALGOS = ("sha256", "md5")


class Entry(BaseModel):
    """One file of a dataset: where it goes, how big it is, how to check and find it."""

    model_config = ConfigDict(frozen=True)

    path: str = Field(description="Relative POSIX path inside the dataset.")
    size: int = Field(ge=0)
    checksum: str | None = Field(
        default=None, description="'<algo>:<hex>', algo in sha256, md5; None when unknown."
    )
    etag: str | None = Field(default=None, description="The source's version tag (S3 ETag, ...).")
    locator: str = Field(description="Where the source finds the bytes (key, URL, path, ...).")

    @field_validator("path")
    @classmethod
    def _safe(cls, v: str) -> str:
        return safe_relpath(v)

    @field_validator("checksum")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        # a content checksum names cache files: it must be a lowercase hex digest
        algo, _, digest = (v or "").partition(":")
        if algo in _CONTENT_ALGOS and not re.fullmatch("[0-9a-f]+", digest):
            raise ValueError(f"{v!r} is not a {algo} hex digest")
        return v

    @property
    def version_tag(self) -> str:
        """What identifies this entry's content: its checksum, else its ETag, else its size."""
        return self.checksum or (f"etag:{self.etag}" if self.etag else f"size:{self.size}")

    @property
    def content_addressed(self) -> bool:
        """True when the version tag is a content checksum (the same bytes wherever they live)."""
        return bool(self.checksum) and self.checksum.split(":", 1)[0] in _CONTENT_ALGOS


class Manifest(BaseModel):
    """Every entry of one dataset version, sorted by path (immutable: the fingerprint is cached)."""

    model_config = ConfigDict(frozen=True)

    source: str = Field(description="The URI that was resolved (credentials never included).")
    entries: list[Entry]
    format: int = MANIFEST_FORMAT

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        check_layout(self.entries, self.source)

    @field_validator("entries")
    @classmethod
    def _sorted(cls, v: list[Entry]) -> list[Entry]:
        return sorted(v, key=lambda e: e.path)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over (path, size, version tag) of every entry: changes when content does.

        Entries tagged only by size, mtime or ETag also hash the source URI: two servers with
        the same file names and sizes are different datasets.
        """
        return fingerprint(self.entries, source=self.source)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def check_fits(self, root: Path | str, *, what: str = "destination") -> None:
        """Refuse this dataset, before anything is fetched, when one of its paths would be too
        long under ``root`` (a cache or --to folder, named by ``what`` in the hint)."""
        check_fits((e.path for e in self.entries), root, origin=self.source, what=what)

    def to_json(self) -> str:
        return self.model_dump_json(indent=None)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            for err in exc.errors():
                cause = (err.get("ctx") or {}).get("error")
                if isinstance(cause, MlstageError):
                    raise cause from exc
            raise

    @classmethod
    def load(cls, path: Path) -> Manifest:
        return cls.from_json(path.read_bytes())


def check_layout(entries: list[Entry], source: str = "") -> None:
    """Refuse entries that cannot all exist as files: duplicates, a file that is also a folder.

    Checked when a manifest is built (at resolve), so nothing is downloaded for a listing that
    could never be published. ``entries`` must be sorted by path.
    """
    where = f" in {source}" if source else ""
    for a, b in zip(entries, entries[1:], strict=False):
        if a.path == b.path:
            raise UnsafePathError(
                f"{a.locator!r} and {b.locator!r}{where} both stage as {a.path!r}",
                hint="rename one of them; paths are compared after normalisation",
            )
    by_path = {e.path: e for e in entries}
    for e in entries:
        for parent in PurePosixPath(e.path).parents:
            other = by_path.get(parent.as_posix())
            if other is not None:
                raise UnsafePathError(
                    f"{other.locator!r}{where} is a file and also the folder of {e.locator!r}",
                    hint="a path cannot be both a file and a folder; rename one of them",
                )


def _without_credentials(uri: str) -> str:
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def fingerprint(entries: Iterable[Entry], *, source: str | None = None) -> str:
    """The version id of ``entries``: checksummed entries hash content only, others their source.

    Checksums name content wherever it lives (the shared tier relies on that); a size, mtime or
    ETag only means something on its own server, so ``source`` is hashed with those entries.
    """
    entries = list(entries)
    h = hashlib.sha256()
    if source is not None and not all(e.content_addressed for e in entries):
        h.update(json.dumps(["source", _without_credentials(source)]).encode())
        h.update(b"\n")
    for e in sorted(entries, key=lambda e: e.path):
        h.update(json.dumps([e.path, e.size, e.version_tag]).encode())
        h.update(b"\n")
    return h.hexdigest()
