"""Whether an endpoint answers ranged GETs with 206: learnt once per endpoint and process.

S3 answers ``Range: bytes=a-b`` with ``206 Partial Content``. Some S3-compatible servers
answer ``200 OK`` instead: rclone's ``serve s3`` (1.75) sends the requested bytes with a
``Content-Range`` header, others send the whole object. obstore (Rust ``object_store``,
``get_range_meta`` in ``src/client/get.rs``) refuses any non-206 answer to a ranged GET
(``NotPartial``), and no option of obstore or object_store accepts one. So such an endpoint's
large objects are fetched whole, one verified stream each: a source asks ``honours`` before it
lets the transfer split objects into parts, and a read that meets a 200 anyway (a manifest
from elsewhere, nothing probed) reads the whole object and keeps the range it was asked for.

The answer is kept per endpoint (``StoreConfig.endpoint_id``) for the life of the process:
servers do not change their range handling between requests, and asking once costs one
one-byte GET.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("mlstage.store")
_known: dict[str, bool] = {}
_lock = threading.Lock()


def known(endpoint_id: str) -> bool | None:
    """True: 206 answers; False: 200 answers (fetch whole); None: not asked yet."""
    with _lock:
        return _known.get(endpoint_id)


def note(endpoint_id: str, honoured: bool, where: str) -> None:
    """Remember what ``endpoint_id`` (named ``where`` in the log) did with a ranged GET."""
    with _lock:
        first = endpoint_id not in _known
        _known[endpoint_id] = honoured
    if first and not honoured:
        log.warning(
            "%s answers ranged GETs with 200 instead of 206 Partial Content: its large "
            "objects are fetched whole, one verified stream each (obstore accepts no other "
            "answer to a range)",
            where,
        )


def forget() -> None:
    """Forget every endpoint (tests start servers on reused ports)."""
    with _lock:
        _known.clear()
