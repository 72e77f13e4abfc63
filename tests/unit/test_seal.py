"""The seal of a dataset tree: the walk is the manifest's order, and every kind of write shows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlstage.cache import seal
from mlstage.folders import walk


def _tree(root: Path) -> Path:
    for rel in ["a", "a-b", "a.c", "a/x", "a/y/z", "a0", "b/c-d", "b/c/e", "B", "é"]:
        p = root / rel
        if rel in ("a",):
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rel.encode())
    return root


def test_the_walk_is_the_manifest_order(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t")
    files = [rel for p, rel, _st in walk(str(root)) if not os.path.isdir(p)]
    assert len(files) == 9
    assert files == sorted(files)  # the manifest sorts paths as strings


@pytest.mark.parametrize(
    "damage",
    ["write", "truncate", "replace", "add", "remove", "rename", "link", "touch-folder"],
)
def test_every_change_breaks_the_seal(tmp_path: Path, damage: str) -> None:
    root = _tree(tmp_path / "t")
    sealed = seal.take(str(root))
    assert seal.intact(str(root), sealed)
    target = root / "a" / "y" / "z"
    if damage == "write":
        with open(target, "r+b") as f:
            f.write(b"Z")
    elif damage == "truncate":
        with open(target, "r+b") as f:
            f.truncate(1)
    elif damage == "replace":
        target.unlink()
        target.write_bytes(b"a/y/z")  # same bytes, another file
    elif damage == "add":
        (root / "a" / "new").write_bytes(b"")
    elif damage == "remove":
        target.unlink()
    elif damage == "rename":
        target.rename(root / "a" / "y" / "zz")
    elif damage == "link":
        target.unlink()
        target.symlink_to("/etc/hostname")
    elif damage == "touch-folder":
        os.utime(root / "b")
    assert not seal.intact(str(root), sealed)


def test_a_seal_round_trips_and_refuses_garbage(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t")
    sealed = seal.take(str(root))
    at = tmp_path / "x.seal"
    sealed.save(at)
    again = seal.Seal.load(at)
    assert again == sealed and again is not None and seal.intact(str(root), again)
    assert seal.Seal.load(tmp_path / "none.seal") is None
    (tmp_path / "garbage.seal").write_bytes(b"garbage")
    assert seal.Seal.load(tmp_path / "garbage.seal") is None
    at.write_bytes(at.read_bytes()[:-8])  # cut short
    assert seal.Seal.load(at) is None
