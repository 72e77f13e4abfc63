"""Sources without network: URIs, brace expansion, folders, ClearML chunk unpacking."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest

from mlstage.errors import ConfigError, IntegrityError, UnsafePathError
from mlstage.manifest import Entry
from mlstage.sources import open_source, scheme_of
from mlstage.sources.base import RemoteObject
from mlstage.sources.clearml import ClearMLSource, FolderStore, parse_clearml_uri
from mlstage.sources.http import _relative_paths, expand_braces
from mlstage.sources.local import FolderSource


def test_brace_expansion_ranges_lists_and_padding() -> None:
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("s-{8..10}.tar") == ["s-8.tar", "s-9.tar", "s-10.tar"]
    assert expand_braces("{train,val}/s-{0..1}.tar") == [
        "train/s-0.tar",
        "train/s-1.tar",
        "val/s-0.tar",
        "val/s-1.tar",
    ]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(ConfigError):
        expand_braces("s-{abc}.tar")


def test_http_paths_are_relative_to_the_common_folder() -> None:
    urls = expand_braces("https://h/d/{train,val}/s-{0..1}.tar")
    assert _relative_paths(urls, "x") == [
        "train/s-0.tar",
        "train/s-1.tar",
        "val/s-0.tar",
        "val/s-1.tar",
    ]
    assert _relative_paths(["https://h/a/b/one.tar"], "x") == ["one.tar"]


def test_uri_schemes_and_refusals() -> None:
    assert scheme_of("/data/x") == "" and scheme_of("s3://b/p") == "s3"
    assert scheme_of("clearml+s3://b/p") == "clearml+s3"
    with pytest.raises(ConfigError, match="no source handles"):
        open_source("gopher://x/y")
    with pytest.raises(ConfigError, match="credentials"):
        open_source("s3://key:secret@bucket/p")
    with pytest.raises(ConfigError, match="credentials"):
        open_source("https://user:pw@host/s-{0..1}.tar")


def test_clearml_uri_forms() -> None:
    assert parse_clearml_uri("clearml://abc123") == {"dataset_id": "abc123"}
    assert parse_clearml_uri("clearml://team/vision/cats@1.2.0") == {
        "dataset_project": "team/vision",
        "dataset_name": "cats",
        "dataset_version": "1.2.0",
    }
    with pytest.raises(ConfigError):
        parse_clearml_uri("clearml://")


def test_folder_source_refuses_links(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("a")
    os.symlink("/etc/passwd", tmp_path / "d" / "link")
    with pytest.raises(UnsafePathError, match="link"):
        FolderSource(tmp_path / "d").resolve()


def _clearml_source(tmp_path: Path) -> ClearMLSource:
    return ClearMLSource("clearml+file:///x", FolderStore(tmp_path), lambda: None)


def _obj(path: str, size: int) -> RemoteObject:
    e = Entry(path=path, size=size, checksum="sha256:00", locator=f"ds/data/{path}")
    return RemoteObject("chunk.zip", 0, None, (e,), archive=True)


def test_clearml_unpack_refuses_link_members(tmp_path: Path) -> None:
    z = tmp_path / "chunk.zip"
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("a.txt")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        _clearml_source(tmp_path).unpack(_obj("a.txt", 11), z, tmp_path / "out")


def test_clearml_unpack_extracts_by_listing_never_by_member_name(tmp_path: Path) -> None:
    z = tmp_path / "chunk.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../evil.txt", "evil")
        zf.writestr("a.txt", "hello")
    out = _clearml_source(tmp_path).unpack(_obj("a.txt", 5), z, tmp_path / "out")
    assert [p.read_bytes() for _e, p in out] == [b"hello"]
    assert all((tmp_path / "out") in p.parents for _e, p in out)
    assert not (tmp_path / "evil.txt").exists()
    with pytest.raises(IntegrityError, match="bytes in the chunk"):
        _clearml_source(tmp_path).unpack(_obj("a.txt", 4), z, tmp_path / "out2")
