"""Adapters that read a streaming dataset where users read data (PyTorch, WebDataset).

Each adapter is its own module and imports its framework only when used, so mlstage never
needs torch or webdataset installed (``pip install 'mlstage[stream]'`` adds them).
"""

from __future__ import annotations

from collections.abc import Sequence

from mlstage.stream import StreamingDataset, StreamView


def as_view(stream: StreamingDataset | StreamView) -> StreamView:
    """The picklable part of a stream, which DataLoader workers can carry."""
    return stream.view if isinstance(stream, StreamingDataset) else stream


def shard_list(view: StreamView, paths: Sequence[str] | None = None) -> list[str]:
    """The paths to read: ``paths`` if given, else the ``.tar`` shards, else every file."""
    if paths is not None:
        return list(paths)
    every = view.paths()
    return [p for p in every if p.endswith(".tar")] or every


def share(paths: Sequence[str], index: int, count: int) -> list[str]:
    """Reader ``index`` of ``count`` gets every count-th path: disjoint, together complete.

    Striding (not blocks) keeps every reader on the head of the fetch order, which is the
    manifest order.
    """
    return list(paths[index::count])
