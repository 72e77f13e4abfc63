"""Writing and copying large files into the page cache in small pieces.

Linux 6.x sizes the page-cache folios of ext4 (and XFS) after each write call, so writes of
512 KB and more ask for high-order pages. On a VM whose host takes back free guest memory
(virtio-balloon free page reporting) those come back slowly: 512 MB written by four threads
in 1 MB calls cost 1.2-2.0 s of system time on this 2-core VM, in 32 KB calls 0.3 s
(measured, kernel 6.18). sendfile and copy_file_range splice a pipe's worth of the source's
folios per write and were as slow and erratic (0.2-1.5 s for four 128 MB copies). So the
fetch engine and the materialiser write ``WRITE_PIECE`` bytes per call, as s5cmd does.
"""

from __future__ import annotations

import errno
import fcntl
import os

WRITE_PIECE = 32 * 1024
_READ = 1024 * 1024
# linux/fs.h: _IOW(0x94, 9, int) in the x86/arm encoding; elsewhere ENOTTY: a plain copy
_FICLONE = 0x40049409
# a clone refused (not failed): no reflinks on this filesystem, across filesystems, ...
# (ioctl_ficlone(2)); EPERM (an immutable destination) and EBADF (a descriptor not open for
# it) are real errors that a plain copy would hit too, so they are raised, not copied around
_NO_CLONE = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS}


def pwrite_all(fd: int, data: bytes | memoryview, pos: int) -> None:
    """Write all of ``data`` at offset ``pos`` of ``fd``, ``WRITE_PIECE`` bytes per call."""
    view = memoryview(data)
    end = len(view)
    off = 0
    while off < end:
        n = os.pwrite(fd, view[off : off + WRITE_PIECE], pos + off)
        if n <= 0:
            raise OSError(errno.EIO, f"pwrite wrote nothing at offset {pos + off}")
        off += n


def copy_file(src: str, dst: str) -> None:
    """Copy ``src`` to a new (or truncated) file ``dst``.

    A reflink where the filesystem has them (btrfs, XFS, bcachefs: instant, no space used),
    else a copy through a 1 MB buffer written ``WRITE_PIECE`` at a time.
    """
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise OSError(errno.EINVAL, f"{src} and {dst} are the same file")
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            return
        except OSError as exc:
            if exc.errno not in _NO_CLONE:
                raise
        # no bigger than the file: zero-filling 1 MB per 32 KB copy took ~20% of its time
        buf = bytearray(min(_READ, max(os.fstat(fin.fileno()).st_size, WRITE_PIECE)))
        view = memoryview(buf)
        out = fout.fileno()
        pos = 0
        while n := fin.readinto(buf):
            pwrite_all(out, view[:n], pos)
            pos += n


def can_reflink(src_dir: str, dst_dir: str) -> bool:
    """Whether files in ``src_dir`` can be reflinked into ``dst_dir`` (one tiny probe)."""
    import tempfile

    try:
        with (
            tempfile.NamedTemporaryFile(dir=src_dir, prefix=".mlstage-probe-") as a,
            tempfile.NamedTemporaryFile(dir=dst_dir, prefix=".mlstage-probe-") as b,
        ):
            a.write(b"x")
            a.flush()
            fcntl.ioctl(b.fileno(), _FICLONE, a.fileno())
            return True
    except OSError:
        return False
