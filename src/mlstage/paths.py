"""Relative paths that can never escape their destination, nor outgrow it."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from mlstage.errors import UnsafePathError

# Linux's limits (ext4, XFS, NFS): a longer name would fail half-way through a staging.
# PATH_MAX counts the terminating NUL, so a path holds at most PATH_MAX - 1 bytes.
NAME_MAX, PATH_MAX = 255, 4096
# What mlstage puts between a destination folder and a dataset's own paths, at most: the
# cache's tmp/trash/<fingerprint>.<pid>-<hex>/ (93 bytes) or datasets/.tmp-<fingerprint>/, a
# --to folder's sibling .<name>.mlstage-tmp-<pid>-<hex>/ (its name and 32 bytes). Generous, so
# that either layout may change within it.
LAYOUT_RESERVE = 128


def shown_path(name: str) -> str:
    """``name`` for a one-line message: whole when short, else its first 60 characters and
    its length (a 4,000-byte key must not make a 4,000-character error)."""
    if len(name) <= 80:
        return repr(name)
    return f"{name[:60]!r}... ({len(name.encode(errors='surrogateescape'))} bytes)"


def _from(origin: str) -> str:
    if not origin:
        return ""
    return f" from {origin if len(origin) <= 120 else origin[:100] + '...'}"


def safe_relpath(name: str, *, origin: str = "") -> str:
    """Return ``name`` as a normalised relative POSIX path, or refuse it.

    Refused: empty names, absolute paths (``/x``), any ``..`` component, backslashes, NUL
    bytes, and names longer than NAME_MAX bytes (paths than PATH_MAX). A ``:`` is an ordinary
    character (``C:x`` is a valid S3 key and file name: mlstage runs on Linux only).
    ``origin`` (a URI) is named in the error.
    """
    where = _from(origin)
    if not name or "\x00" in name or "\\" in name:
        raise UnsafePathError(
            f"refusing unsafe path {shown_path(name)}{where}",
            hint="names must be relative POSIX paths",
        )
    if name.startswith("/"):
        raise UnsafePathError(
            f"refusing absolute path {shown_path(name)}{where}",
            hint="keys and archive members must be relative",
        )
    parts = PurePosixPath(name).parts
    if any(p == ".." for p in parts):
        raise UnsafePathError(
            f"refusing path {shown_path(name)}{where}: it escapes the destination with '..'",
            hint="remove '..' from the key or member name",
        )
    norm = posixpath.normpath(name)
    if norm in (".", "") or norm.startswith("../"):
        raise UnsafePathError(
            f"refusing unsafe path {shown_path(name)}{where}",
            hint="names must be inside the destination",
        )
    if len(norm) * 4 <= NAME_MAX:  # UTF-8 takes at most 4 bytes a character: short enough
        return norm
    longest = max(len(p.encode(errors="surrogateescape")) for p in norm.split("/"))
    if longest > NAME_MAX:
        raise UnsafePathError(
            f"refusing path {shown_path(name)}{where}: one of its names is {longest} bytes, "
            f"longer than a file system allows ({NAME_MAX})",
            hint=f"rename the key or member: each part of a path holds at most {NAME_MAX} bytes",
        )
    size = len(norm.encode(errors="surrogateescape"))
    if size >= PATH_MAX:
        raise UnsafePathError(
            f"refusing path {shown_path(name)}{where}: {size} bytes is longer than a file "
            f"system allows ({PATH_MAX - 1})",
            hint="rename the key or member to a shorter path",
        )
    return norm


def check_fits(
    paths: Iterable[str], root: Path | str, *, origin: str = "", what: str = "destination"
) -> None:
    """Refuse, before anything is fetched, a path that would be too long once under ``root``.

    Each path is already short enough on its own (``safe_relpath``), but the file it becomes
    is ``root``, mlstage's own folders (LAYOUT_RESERVE) and the path: over PATH_MAX it would
    fail with "File name too long" after its bytes were downloaded. ``what`` names ``root``
    in the hint, e.g. "cache folder (MLSTAGE_CACHE_DIR)" or "--to folder".
    """
    longest = max(paths, key=lambda p: len(p.encode(errors="surrogateescape")), default=None)
    if longest is None:
        return
    base = os.path.abspath(root)
    size = (
        len(os.fsencode(base)) + 1 + LAYOUT_RESERVE + len(longest.encode(errors="surrogateescape"))
    )
    if size >= PATH_MAX:
        where = _from(origin)
        raise UnsafePathError(
            f"refusing path {shown_path(longest)}{where}: under {shown_path(base)} it would "
            f"be a path of about {size} bytes, longer than a file system allows "
            f"({PATH_MAX - 1})",
            hint=f"use a {what} with a shorter path, or shorter keys",
        )


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
