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


@pytest.mark.parametrize("name", ["d/" + "n" * 256, "/".join(["d" * 200] * 21)])
def test_names_longer_than_a_file_system_allows_are_refused(name: str) -> None:
    with pytest.raises(UnsafePathError, match="longer than a file system allows"):
        safe_relpath(name, origin="s3://b/p")
    assert safe_relpath("d/" + "n" * 255) == "d/" + "n" * 255


def test_a_checksum_must_be_the_digest_it_claims() -> None:
    from mlstage.errors import ConfigError
    from mlstage.manifest import Entry

    good = "sha256:" + "ab" * 32
    assert Entry(path="a", size=1, checksum=good, locator="a").checksum == good
    for bad in ("sha256:../../etc/passwd", "md5:XYZ", "sha256:" + "AB" * 32):
        with pytest.raises(ConfigError, match="hex digest"):
            Entry(path="a", size=1, checksum=bad, locator="a")
