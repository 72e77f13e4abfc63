from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlstage.errors import UnsafePathError
from mlstage.paths import join_inside, safe_relpath


def test_normalises() -> None:
    assert safe_relpath("a/./b//c") == "a/b/c"


def test_join_refuses_symlinked_parent(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(UnsafePathError, match="outside"):
        join_inside(root, "link/file")
    assert join_inside(root, "sub/file") == root / "sub/file"
