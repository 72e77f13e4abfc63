"""A PyTorch IterableDataset over a dataset that is still staging.

Each DataLoader worker (and each rank, when ``rank``/``world_size`` are given) reads a
disjoint share of the shards, waiting only for the shards it reads next::

    with open_stream(cache, source, manifest) as stream:
        loader = DataLoader(ShardStream(stream), batch_size=32, num_workers=4,
                            multiprocessing_context="spawn")

Use ``multiprocessing_context="spawn"`` inside a Prefect flow process: once a flow has run in
a process (Prefect 3.8), every forked child exits with code 1, so fork-based DataLoader
workers die at start. ShardStream pickles cheaply, so spawn costs only the workers' start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from mlstage.adapters import as_view, shard_list, share
from mlstage.reader import iter_shard
from mlstage.stream import Order, StreamingDataset, StreamView


class ShardStream(IterableDataset):
    """Samples of the stream's shards; ``decode`` turns one ready file into samples."""

    def __init__(
        self,
        stream: StreamingDataset | StreamView,
        *,
        paths: Sequence[str] | None = None,
        order: Order = "manifest",
        decode: Callable[[Path], Iterable[Any]] = iter_shard,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.view = as_view(stream)
        self.paths = shard_list(self.view, paths)
        self.order: Order = order
        self.decode = decode
        self.rank = rank
        self.world_size = world_size

    def my_paths(self) -> list[str]:
        """This reader's share: by rank, then by DataLoader worker."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return share(self.paths, self.rank * workers + worker, self.world_size * workers)

    def __iter__(self) -> Iterator[Any]:
        for obj in self.view.iter_ready(self.order, self.my_paths()):
            yield from self.decode(obj.file)
