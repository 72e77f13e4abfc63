"""A claim's lease, renewed while its owner works (SQLite; the PostgreSQL and killed-process
cases are in tests/integration/test_restage_lease.py)."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import update

from mlstage.state import StateStore
from mlstage.state.claims import Coordination
from mlstage.state.models import RestageClaim

LEASE = 1.0


def coordination(tmp_path: Path) -> Coordination:
    return Coordination(StateStore.open(f"sqlite:///{tmp_path / 'state.db'}"))


def test_a_held_claim_is_renewed_and_stops_being_renewed_after(tmp_path: Path) -> None:
    a, b = coordination(tmp_path), coordination(tmp_path)
    assert a.claim("d", "v", owner="a", lease_seconds=LEASE)
    with a.hold("d", "v", owner="a", lease_seconds=LEASE) as lease:
        end = time.monotonic() + 2.5 * LEASE
        while time.monotonic() < end:
            assert not b.claim("d", "v", owner="b", lease_seconds=LEASE)
            time.sleep(0.1)
    assert not lease.lost and not lease._thread.is_alive()
    (before,) = a.claims("d")
    time.sleep(LEASE + 0.1)  # more than two beats and a whole lease
    (after,) = a.claims("d")
    assert after.claimed_at == before.claimed_at  # no renewal once the block ended
    assert b.claim("d", "v", owner="b", lease_seconds=LEASE)  # the owner left: it runs out


def test_a_claim_taken_over_is_lost_and_not_closed_by_its_old_owner(tmp_path: Path) -> None:
    a, b = coordination(tmp_path), coordination(tmp_path)
    assert a.claim("d", "v", owner="a", lease_seconds=LEASE)
    with a.hold("d", "v", owner="a", lease_seconds=LEASE) as lease:
        with b.store.session(write=True) as s:  # as after a lease a's node could not renew
            s.execute(update(RestageClaim).values(owner="b"))
            s.commit()
        time.sleep(LEASE)
    assert lease.lost
    assert not a.finish("d", "v", "failed", owner="a")
    (claim,) = b.claims("d")
    assert (claim.owner, claim.status) == ("b", "running")
    assert b.finish("d", "v", "done", owner="b")
