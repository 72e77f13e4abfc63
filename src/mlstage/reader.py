"""Read a staged dataset: the samples of WebDataset-style tar shards, or plain files."""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from mlstage.paths import safe_relpath
from mlstage.recipes.shard import sample_key

Sample = dict[str, bytes]


def shard_paths(data_dir: Path) -> list[Path]:
    """The tar shards of a staged dataset, in order."""
    return sorted(p for p in Path(data_dir).rglob("*.tar") if p.is_file())


def iter_shard(path: Path) -> Iterator[Sample]:
    """Samples of one shard, ``{"__key__": b"...", "<ext>": bytes}``; members are never extracted."""
    with tarfile.open(path, "r:") as tar:
        current: Sample = {}
        key = None
        for member in tar:
            if not member.isfile():
                continue
            name = safe_relpath(member.name, origin=str(path))
            k = sample_key(name)
            if k != key and current:
                yield current
                current = {}
            key = k
            ext = name.rsplit("/", 1)[-1].split(".", 1)[1] if "." in name.rsplit("/", 1)[-1] else ""
            f = tar.extractfile(member)
            assert f is not None
            current["__key__"] = k.encode()
            current[ext] = f.read()
        if current:
            yield current


def iter_samples(shards: Iterable[Path]) -> Iterator[Sample]:
    for shard in shards:
        yield from iter_shard(shard)
