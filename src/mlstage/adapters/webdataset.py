"""WebDataset over the staged shard paths, while they are still landing.

``ReadyShards`` is a WebDataset source stage: it yields ``{"url": <local path>}`` for this
reader's shards as each becomes ready, split by rank and DataLoader worker the way
WebDataset's own ``split_by_node``/``split_by_worker`` do (RANK/WORLD_SIZE, worker info)::

    pipeline = webdataset_pipeline(stream, wds.decode(), wds.to_tuple("input.json", "y"))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import webdataset as wds
from torch.utils.data import IterableDataset

from mlstage.adapters import as_view, shard_list, share
from mlstage.stream import Order, StreamingDataset, StreamView


class ReadyShards(IterableDataset):
    """This reader's shard files as ``{"url": path}`` in ``order``, each once it is local."""

    def __init__(
        self,
        stream: StreamingDataset | StreamView,
        *,
        paths: Sequence[str] | None = None,
        order: Order = "manifest",
    ) -> None:
        super().__init__()
        self.view = as_view(stream)
        self.paths = shard_list(self.view, paths)
        self.order: Order = order

    def my_paths(self) -> list[str]:
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        return share(self.paths, rank * workers + worker, world * workers)

    def __iter__(self) -> Iterator[dict[str, str]]:
        for obj in self.view.iter_ready(self.order, self.my_paths()):
            yield {"url": str(obj.file)}


def webdataset_pipeline(
    stream: StreamingDataset | StreamView,
    *stages: Any,
    paths: Sequence[str] | None = None,
    order: Order = "manifest",
) -> wds.DataPipeline:
    """A ``wds.DataPipeline``: ready shards -> tar samples -> ``stages``."""
    return wds.DataPipeline(
        ReadyShards(stream, paths=paths, order=order), wds.tarfile_to_samples(), *stages
    )
