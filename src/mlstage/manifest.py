"""Manifest: the exact listing of a dataset version; its fingerprint is the version."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlstage.paths import safe_relpath

MANIFEST_FORMAT = 1


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

    @property
    def version_tag(self) -> str:
        """What identifies this entry's content: its checksum, else its ETag, else its size."""
        return self.checksum or (f"etag:{self.etag}" if self.etag else f"size:{self.size}")


class Manifest(BaseModel):
    """Every entry of one dataset version, sorted by path (immutable: the fingerprint is cached)."""

    model_config = ConfigDict(frozen=True)

    source: str = Field(description="The URI that was resolved (credentials never included).")
    entries: list[Entry]
    format: int = MANIFEST_FORMAT

    @field_validator("entries")
    @classmethod
    def _sorted_unique(cls, v: list[Entry]) -> list[Entry]:
        v = sorted(v, key=lambda e: e.path)
        for a, b in zip(v, v[1:], strict=False):
            if a.path == b.path:
                raise ValueError(f"duplicate path in manifest: {a.path!r}")
        return v

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over (path, size, version tag) of every entry: changes when content does."""
        return fingerprint(self.entries)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def to_json(self) -> str:
        return self.model_dump_json(indent=None)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        return cls.model_validate_json(text)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        return cls.from_json(path.read_bytes())


def fingerprint(entries: Iterable[Entry]) -> str:
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.path):
        h.update(json.dumps([e.path, e.size, e.version_tag]).encode())
        h.update(b"\n")
    return h.hexdigest()
