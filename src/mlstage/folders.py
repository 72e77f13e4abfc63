"""Walking a folder in manifest order: what the folder source lists and a tree's seal checks.

Siblings are sorted by name, a folder's name compared as ``name + '/'``, so the walk yields
files in exactly the order a manifest sorts their paths as strings (``a-b`` < ``a/x`` < ``a0``)
and a million-file listing is never sorted as a whole. Folders come before their contents;
links are returned (with their own ``lstat``), never followed. One ``lstat`` per entry.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator


def _sorted_entries(folder: str) -> list[os.DirEntry[str]]:
    entries = list(os.scandir(folder))
    entries.sort(key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
    return entries


def walk(root: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """``(path, relative path, lstat)`` of every entry below ``root``, in manifest order."""
    stack: list[tuple[str, Iterator[os.DirEntry[str]]]] = [("", iter(_sorted_entries(root)))]
    while stack:
        prefix, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        st = entry.stat(follow_symlinks=False)
        rel = prefix + entry.name
        yield entry.path, rel, st
        if stat.S_ISDIR(st.st_mode):
            stack.append((rel + "/", iter(_sorted_entries(entry.path))))
