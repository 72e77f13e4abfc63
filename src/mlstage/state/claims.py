"""Coordination rows in the state DB, so watchers and re-stages can run on many machines.

Two tables, both keyed so the database itself decides races:
- ``watch_states``: per dataset, the version last announced (``current``) and a newer
  fingerprint still settling (``pending`` since ``pending_since``). Announcing is a
  compare-and-swap on ``current``: of several watchers that see the same change, one wins.
- ``restage_claims``: one row per (dataset, version) re-stage; inserting it is the claim.
  A failed claim, or a running one whose lease ran out, may be taken over. While its owner
  works, ``ClaimLease`` (``Coordination.hold``) renews the lease from a background thread,
  so a claim runs out only once its owner is gone (killed, its machine lost), however long
  the work takes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError as DBIntegrityError

from mlstage.errors import MlstageError
from mlstage.redact import scrub_text
from mlstage.state.models import RestageClaim, WatchState, utcnow
from mlstage.state.store import StateStore

Verdict = Literal["baseline", "unchanged", "pending", "changed", "lost"]
# Every claimer must use the same lease: a running claim older than the claimer's lease is
# taken over. An hour also covers nodes of older mlstage versions, which never renew.
DEFAULT_LEASE_SECONDS = 3600.0
log = logging.getLogger("mlstage.claims")


@dataclass(frozen=True)
class Observation:
    """What one observation of a dataset's fingerprint meant.

    baseline: first sight, nothing to compare; unchanged: equals ``current``; pending: differs
    but has not been stable for the settle time; changed: settled and this caller announced
    it; lost: settled but another watcher announced it first.
    """

    verdict: Verdict
    dataset: str
    fingerprint: str
    previous: str | None


def default_owner() -> str:
    """``host:pid``: who holds a claim, for people reading the table."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Coordination:
    """Watch states and re-stage claims over a StateStore (tables: migration 0003)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    # -- watch states ---------------------------------------------------------------------
    def watch_state(self, dataset: str) -> WatchState | None:
        with self.store.session() as s:
            return s.get(WatchState, dataset)

    def observe(
        self,
        dataset: str,
        fingerprint: str,
        *,
        now: float,
        settle_seconds: float,
        baseline: str | None = None,
    ) -> Observation:
        """Record that ``dataset`` was seen at ``fingerprint`` at ``now``; say what that means.

        A fingerprint is settled once it has been seen for at least ``settle_seconds`` (two
        observations that far apart, with no other fingerprint in between), so a burst of
        uploads settles once, on its final state. ``baseline`` is the version to compare
        with on first sight (the latest recorded one), else the first sight is the baseline.
        """
        with self.store.session(write=True) as s:
            row = s.get(WatchState, dataset)
            if row is None:
                s.add(
                    WatchState(
                        dataset=dataset,
                        current=baseline or fingerprint,
                        observed_at=now,
                    )
                )
                try:
                    s.commit()
                except DBIntegrityError:  # another watcher created it first
                    s.rollback()
                row = s.get(WatchState, dataset, populate_existing=True)
                assert row is not None
                if baseline is None and row.current == fingerprint:
                    return Observation("baseline", dataset, fingerprint, None)
            previous = row.current
            if fingerprint == previous:
                s.execute(
                    update(WatchState)
                    .where(WatchState.dataset == dataset)  # type: ignore[arg-type]
                    .values(pending=None, pending_since=None, observed_at=now)
                )
                s.commit()
                return Observation("unchanged", dataset, fingerprint, previous)
            if row.pending != fingerprint or row.pending_since is None:
                # first sight of this fingerprint: the settle clock starts now
                s.execute(
                    update(WatchState)
                    .where(
                        WatchState.dataset == dataset,  # type: ignore[arg-type]
                        or_(
                            WatchState.pending.is_(None),  # type: ignore[union-attr]
                            WatchState.pending != fingerprint,  # type: ignore[arg-type]
                        ),
                    )
                    .values(pending=fingerprint, pending_since=now, observed_at=now)
                )
                s.commit()
                since = now
            else:
                since = row.pending_since
            if settle_seconds > 0 and now - since < settle_seconds:
                return Observation("pending", dataset, fingerprint, previous)
            won = s.execute(
                update(WatchState)
                .where(
                    WatchState.dataset == dataset,  # type: ignore[arg-type]
                    WatchState.current == previous,  # type: ignore[arg-type]
                )
                .values(
                    current=fingerprint,
                    pending=None,
                    pending_since=None,
                    observed_at=now,
                    changed_at=utcnow(),
                )
            ).rowcount
            s.commit()
            return Observation("changed" if won else "lost", dataset, fingerprint, previous)

    # -- re-stage claims ------------------------------------------------------------------
    def claim(
        self,
        dataset: str,
        version: str,
        *,
        owner: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> bool:
        """Claim the re-stage of ``version`` of ``dataset``: True for exactly one caller.

        A claim that failed, or is still running ``lease_seconds`` after it was last claimed
        or renewed (its owner died), can be taken over; a done or superseded one cannot.
        The winner keeps it with ``hold`` while it works.
        """
        owner = owner or default_owner()
        now = time.time()
        with self.store.session(write=True) as s:
            s.add(RestageClaim(dataset=dataset, version=version, owner=owner, claimed_at=now))
            try:
                s.commit()
                return True
            except DBIntegrityError:
                s.rollback()
            taken = s.execute(
                update(RestageClaim)
                .where(
                    RestageClaim.dataset == dataset,  # type: ignore[arg-type]
                    RestageClaim.version == version,  # type: ignore[arg-type]
                    or_(
                        RestageClaim.status == "failed",  # type: ignore[arg-type]
                        (RestageClaim.status == "running")  # type: ignore[arg-type]
                        & (RestageClaim.claimed_at < now - lease_seconds),  # type: ignore[operator]
                    ),
                )
                .values(owner=owner, status="running", claimed_at=now, detail=None)
            ).rowcount
            s.commit()
            return bool(taken)

    def renew(self, dataset: str, version: str, owner: str) -> bool:
        """Move the lease of ``owner``'s running claim forward: False once it is not theirs."""
        with self.store.session(write=True) as s:
            renewed = s.execute(
                update(RestageClaim)
                .where(
                    RestageClaim.dataset == dataset,  # type: ignore[arg-type]
                    RestageClaim.version == version,  # type: ignore[arg-type]
                    RestageClaim.owner == owner,  # type: ignore[arg-type]
                    RestageClaim.status == "running",  # type: ignore[arg-type]
                )
                .values(claimed_at=time.time())
            ).rowcount
            s.commit()
        return bool(renewed)

    def hold(
        self,
        dataset: str,
        version: str,
        *,
        owner: str,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> ClaimLease:
        """A context manager that keeps ``owner``'s claim alive while the block runs."""
        return ClaimLease(self, dataset, version, owner, lease_seconds)

    def finish(
        self,
        dataset: str,
        version: str,
        status: str,
        detail: str | None = None,
        *,
        owner: str | None = None,
    ) -> bool:
        """Close a claim: done, failed (may be retried) or superseded (a newer version came).

        With ``owner``, only while the claim is still theirs (a claimant whose claim was
        taken over must not close the new owner's); False when nothing was closed.
        """
        conditions = [
            RestageClaim.dataset == dataset,
            RestageClaim.version == version,
        ]
        if owner is not None:
            conditions.append(RestageClaim.owner == owner)
        with self.store.session(write=True) as s:
            closed = s.execute(
                update(RestageClaim)
                .where(*conditions)  # type: ignore[arg-type]
                .values(
                    status=status,
                    finished_at=utcnow(),
                    detail=scrub_text(detail) if detail else detail,
                )
            ).rowcount
            s.commit()
        return bool(closed)

    def claims(self, dataset: str) -> list[RestageClaim]:
        """Every re-stage claim of ``dataset``, oldest first."""
        from sqlmodel import col, select

        with self.store.session() as s:
            q = (
                select(RestageClaim)
                .where(RestageClaim.dataset == dataset)
                .order_by(col(RestageClaim.claimed_at))
            )
            return list(s.exec(q))


class ClaimLease:
    """Renews a claim every third of its lease from a daemon thread while its owner works.

    A renewal that finds the claim no longer the owner's (taken over after the owner could
    not reach the DB for a whole lease) stops renewing and sets ``lost``; a renewal that
    fails (DB unreachable) is logged and retried at the next beat.
    """

    def __init__(
        self, coord: Coordination, dataset: str, version: str, owner: str, lease_seconds: float
    ) -> None:
        self.coord, self.dataset, self.version, self.owner = coord, dataset, version, owner
        self.interval = lease_seconds / 3
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"claim-lease-{dataset}", daemon=True
        )

    def __enter__(self) -> ClaimLease:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                held = self.coord.renew(self.dataset, self.version, self.owner)
            except MlstageError as exc:
                log.warning("cannot renew the claim on %s %s: %s", self.dataset, self.version, exc)
                continue
            if not held:
                self.lost = True
                log.warning(
                    "the claim on %s %s is no longer %s's: another claimant took it over",
                    self.dataset,
                    self.version,
                    self.owner,
                )
                return
