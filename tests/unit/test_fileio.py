"""Page-cache-friendly writes and copies (mlstage.fileio)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mlstage import fileio


def test_pwrite_all_writes_every_byte_at_its_offset(tmp_path: Path) -> None:
    data = os.urandom(3 * fileio.WRITE_PIECE + 123)  # not a multiple of the piece
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, 10 + len(data))
        fileio.pwrite_all(fd, data, 10)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\0" * 10 + data


def test_pwrite_all_splits_into_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real = os.pwrite

    def pwrite(fd: int, data: memoryview, pos: int) -> int:
        sizes.append(len(data))
        return real(fd, data[:1000], pos)  # a short write: the rest must follow

    monkeypatch.setattr(fileio.os, "pwrite", pwrite)
    data = os.urandom(fileio.WRITE_PIECE * 2 + 1)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        fileio.pwrite_all(fd, data, 0)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data
    assert max(sizes) <= fileio.WRITE_PIECE


@pytest.mark.parametrize("size", [0, 1, fileio.WRITE_PIECE, 3 * 1024 * 1024 + 7])
def test_copy_file_copies_content(tmp_path: Path, size: int) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(size))
    dst.write_bytes(b"old content, longer than some sources")
    fileio.copy_file(str(src), str(dst))
    assert dst.read_bytes() == src.read_bytes()
    assert not os.path.samefile(src, dst)


def test_copy_file_falls_back_when_reflinks_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_reflink(*_args: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(fileio.fcntl, "ioctl", no_reflink)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(100_000))
    fileio.copy_file(str(src), str(dst))
    assert dst.read_bytes() == src.read_bytes()


def test_copy_file_reports_real_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.fcntl, "ioctl", full)
    src = tmp_path / "src"
    src.write_bytes(b"x")
    with pytest.raises(OSError) as info:
        fileio.copy_file(str(src), str(tmp_path / "dst"))
    assert info.value.errno == errno.ENOSPC


def test_copy_file_refuses_to_copy_a_file_onto_itself(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"the cache's object")
    os.link(src, tmp_path / "link")  # --link leaves such pairs around
    with pytest.raises(OSError) as info:
        fileio.copy_file(str(src), str(tmp_path / "link"))
    assert info.value.errno == errno.EINVAL
    assert src.read_bytes() == b"the cache's object"  # not emptied by opening dst for writing


def test_pwrite_all_never_spins_on_a_write_of_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fileio.os, "pwrite", lambda fd, data, pos: 0)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError):
            fileio.pwrite_all(fd, b"data", 0)
    finally:
        os.close(fd)


def test_can_reflink_answers_without_leaving_files(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert isinstance(fileio.can_reflink(str(tmp_path / "a"), str(tmp_path / "b")), bool)
    assert not fileio.can_reflink(str(tmp_path / "missing"), str(tmp_path / "b"))
    assert list((tmp_path / "a").iterdir()) == list((tmp_path / "b").iterdir()) == []


@pytest.mark.parametrize("code", [errno.EPERM, errno.EBADF])
def test_a_clone_that_fails_is_an_error_not_a_reason_to_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """EPERM (an immutable destination) and EBADF are failures, not 'no reflinks here'."""
    import mlstage.fileio as fileio

    src = tmp_path / "src"
    src.write_bytes(b"data")

    def refuse(*_args: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fileio.fcntl, "ioctl", refuse)
    with pytest.raises(OSError) as info:
        fileio.copy_file(str(src), str(tmp_path / "dst"))
    assert info.value.errno == code
