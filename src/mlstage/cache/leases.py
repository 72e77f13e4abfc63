"""Leases: what keeps a cached dataset from eviction while something reads it.

Two kinds, because one cannot serve both needs.

* A shared flock on ``locks/lease-<fp>`` held while a block runs (``LocalCache.lease`` and
  ``use``). The kernel drops it when the process exits or is killed, so a crashed reader never
  pins data and there is no pid to check or clock to trust; it works across pods that share
  the hostPath. This is what runs use.
* A recorded lease (``hold``/``release``): a row with holder, host, pid, pid start time and
  expiry, for data that must outlive a process (a Kubernetes job whose steps run in separate
  processes or pods). It is reclaimed when it expires, or, when taken with ``bind_pid``, as
  soon as that pid is gone (the pid's start time guards against pid reuse). A pid is only
  checked by processes with the same hostname and pid namespace; from other pods only expiry
  applies, so give a ttl you can live with after a crash.

The evictor skips a dataset if it cannot take ``lease-<fp>`` exclusively (non-blocking) or if
a live recorded lease names it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from mlstage.cache.files import CacheFiles, flock
from mlstage.cache.index import CacheIndex, LeaseRow
from mlstage.errors import CacheError, ConfigError


@dataclass(frozen=True)
class Lease:
    """A recorded lease (see the module docstring); release it with ``LocalCache.release``."""

    id: int
    fingerprint: str
    holder: str
    expires: float


def pid_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards pid reuse); None where /proc is absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return start is None or pid_start(pid) in (None, start)


def host_identity() -> str:
    """Hostname plus pid namespace: where a recorded pid can be checked (pods with
    hostNetwork share the node's hostname but not its pids)."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"{socket.gethostname()}/{ns}" if ns else socket.gethostname()


class Leases:
    """The leases of the cache at ``files.root``."""

    def __init__(self, files: CacheFiles, index: CacheIndex) -> None:
        self.files = files
        self.index = index
        self.host = host_identity()

    def reading(self, fingerprint: str) -> AbstractContextManager[bool]:
        """The shared flock a reader holds while it reads (yields True)."""
        return flock(self.files.lock(f"lease-{fingerprint}"), fcntl.LOCK_SH)

    def exclusive(self, fingerprint: str) -> AbstractContextManager[bool]:
        """The lease flock taken exclusively without waiting: yields False while anyone reads."""
        return flock(self.files.lock(f"lease-{fingerprint}"), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def hold(
        self, fingerprint: str, ttl_seconds: float, *, holder: str = "", bind_pid: bool = False
    ) -> Lease:
        """Record a lease that outlives this process: kept until released or ``ttl_seconds``.

        With ``bind_pid`` it also ends when this process dies (checked on this host only).
        """
        if ttl_seconds <= 0:
            raise ConfigError("a lease needs a positive ttl", hint="pass ttl_seconds > 0")
        pid = os.getpid() if bind_pid else None
        holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        expires = time.time() + ttl_seconds
        lease_id = self.index.add_lease(
            fingerprint, holder, self.host, pid, pid_start(pid) if pid else None, expires
        )
        if lease_id is None:  # checked in the lease's own transaction: no race with eviction
            raise CacheError(
                f"dataset {fingerprint[:12]} is not in the cache at {self.files.root}",
                hint="stage it first",
            )
        return Lease(lease_id, fingerprint, holder, expires)

    def release(self, lease_id: int) -> bool:
        """End a recorded lease; False when it was already gone (released or reclaimed)."""
        return self.index.remove_lease(lease_id)

    def live(self, lease: LeaseRow, now: float) -> bool:
        if lease.expires <= now:
            return False
        if lease.pid is not None and lease.host == self.host:
            return pid_alive(lease.pid, lease.pid_start)
        return True

    def recorded(self, fingerprint: str) -> bool:
        """True while a live recorded lease names ``fingerprint``."""
        now = time.time()
        return any(self.live(r, now) for r in self.index.leases(fingerprint))

    def reclaim(self) -> int:
        """Remove recorded leases that expired or whose process is gone; how many."""
        now = time.time()
        dead = [row.id for row in self.index.leases() if not self.live(row, now)]
        for lease_id in dead:
            self.index.remove_lease(lease_id)
        return len(dead)

    def in_use(self, fingerprint: str) -> bool:
        """True while any process holds a lease flock or a live recorded lease on it."""
        with self.exclusive(fingerprint) as free:
            if not free:
                return True
        return self.recorded(fingerprint)
