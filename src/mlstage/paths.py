"""Relative paths that can never escape their destination."""

from __future__ import annotations

import posixpath
from pathlib import Path, PurePosixPath

from mlstage.errors import UnsafePathError

# Linux's limits (ext4, XFS, NFS): a longer name would fail half-way through a staging.
NAME_MAX, PATH_MAX = 255, 4096


def safe_relpath(name: str, *, origin: str = "") -> str:
    """Return ``name`` as a normalised relative POSIX path, or refuse it.

    Refused: empty names, absolute paths (``/x``, ``C:\\x``), any ``..`` component,
    backslashes, NUL bytes, and names longer than NAME_MAX bytes (paths than PATH_MAX).
    ``origin`` (a URI) is named in the error.
    """
    where = f" from {origin}" if origin else ""
    if not name or "\x00" in name or "\\" in name:
        raise UnsafePathError(
            f"refusing unsafe path {name!r}{where}", hint="names must be relative POSIX paths"
        )
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafePathError(
            f"refusing absolute path {name!r}{where}",
            hint="keys and archive members must be relative",
        )
    parts = PurePosixPath(name).parts
    if any(p == ".." for p in parts):
        raise UnsafePathError(
            f"refusing path {name!r}{where}: it escapes the destination with '..'",
            hint="remove '..' from the key or member name",
        )
    norm = posixpath.normpath(name)
    if norm in (".", "") or norm.startswith("../"):
        raise UnsafePathError(
            f"refusing unsafe path {name!r}{where}", hint="names must be inside the destination"
        )
    if len(norm) * 4 <= NAME_MAX:  # UTF-8 takes at most 4 bytes a character: short enough
        return norm
    longest = max(len(p.encode()) for p in norm.split("/"))
    if longest > NAME_MAX or len(norm.encode()) > PATH_MAX:
        raise UnsafePathError(
            f"refusing path {name[:80]!r}...{where}: a name of {longest} bytes or a path of "
            f"{len(norm.encode())} bytes is longer than a file system allows "
            f"({NAME_MAX} per name, {PATH_MAX} in all)",
            hint="rename the key or member",
        )
    return norm


def join_inside(root: Path, relpath: str) -> Path:
    """``root / relpath``, refusing any result outside ``root`` (symlinked parents included)."""
    rel = safe_relpath(relpath)
    target = root / rel
    resolved_root = root.resolve()
    resolved_parent = target.parent.resolve()
    if resolved_parent != resolved_root and resolved_root not in resolved_parent.parents:
        raise UnsafePathError(
            f"refusing {relpath!r}: it resolves outside {root}", hint="a parent folder is a link"
        )
    return target
