"""Streaming: read a dataset while it stages, and keep it as a normal cache entry afterwards.

``open_stream`` starts ``LocalCache.stage`` in a background thread and hands back a
``StreamingDataset``: an iterator of ready objects, in manifest order or completion order,
that blocks only when the object it needs next has not landed yet. Objects are fetched in
priority order (the reader's order first): the head object alone, so the first one arrives as
fast as one fetch can make it, then a small byte window ahead of the reader.

Every ready object is verified and already in the content-addressed store; it appears as a
hard link in the stream's own folder (``data_dir``) and as one line in ``ready.jsonl``. That
folder and log are the cross-process protocol: DataLoader workers, a WebDataset pipeline or a
command entrypoint read them through a picklable ``StreamView``::

    <cache>/streams/<fp12>-<pid>-<rand>/data/...        hard links to ready objects
    <cache>/streams/<fp12>-<pid>-<rand>/ready.jsonl     "path" per ready object; last line
                                                         {"end": "complete"|"failed"|"cancelled"}
    <cache>/streams/<fp12>-<pid>-<rand>/stall/*.json    stall seconds each worker measured
    <cache>/streams/<fp12>-<pid>-<rand>/owner.json      host identity, pid, pid start time

A new stream removes folders of streams that are surely gone: same host identity (hostname
and pid namespace, as recorded leases use) and a dead pid. Pods sharing a hostPath cache
cannot see each other's pids, so their folders are left alone.

When staging finishes the dataset is an ordinary complete entry (``LocalCache.lookup`` finds
it) and the stream holds a lease on it until it is closed. A stream closed early cancels its
staging: what landed stays in the object store and the next stage or stream fetches only the
rest; the dataset tree is never built half.
"""

from mlstage.stream._dataset import StreamingDataset, StreamStats, open_stream
from mlstage.stream._reading import (
    READY_LIST_ENV,
    Order,
    ReadyObject,
    StreamCancelled,
    StreamFailed,
    StreamView,
)

__all__ = [
    "READY_LIST_ENV",
    "Order",
    "ReadyObject",
    "StreamCancelled",
    "StreamFailed",
    "StreamStats",
    "StreamView",
    "StreamingDataset",
    "open_stream",
]
