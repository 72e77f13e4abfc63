"""A cached dataset's record: the manifest it was built from and the sha256 of each entry.

``manifests/<fp>.json`` holds it; it is written (to a temp file, then renamed) before the tree
is published, so every ready dataset has one. Verification and repair read it; a hit does not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlstage.errors import CacheError
from mlstage.manifest import Manifest


def read_record(path: Path) -> tuple[Manifest, list[str]] | None:
    """The manifest and per-entry digests at ``path``; None when there is no record."""
    try:
        data = json.loads(path.read_bytes())
        return Manifest.model_validate(data["manifest"]), list(data["digests"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(
            f"{path} is unreadable: {exc}", hint="run `mlstage cache verify --repair`"
        ) from exc


def write_record(path: Path, manifest: Manifest, digests: list[str]) -> None:
    """Write the record atomically; a failed write leaves no temp file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    body = {"manifest": manifest.model_dump(mode="json"), "digests": digests}
    try:
        tmp.write_text(json.dumps(body, separators=(",", ":")))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
