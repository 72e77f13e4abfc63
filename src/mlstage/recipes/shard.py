"""The ``shard`` recipe: pack many small files into WebDataset-style tar shards.

Files are grouped into samples by their key (the path up to the first '.' of the file name),
samples are sorted by key and never split across shards, and every tar header is fixed (mtime,
owner, mode), so the same input and parameters give byte-identical shards.
"""

from __future__ import annotations

import os
import tarfile
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlstage.errors import UnsafePathError
from mlstage.paths import join_inside, safe_relpath

SHARD_VERSION = "1"


class ShardParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_bytes: int = Field(default=256 * 1024 * 1024, ge=1024, description="Target shard size.")
    max_samples: int = Field(default=0, ge=0, description="Samples per shard at most; 0: no limit.")
    pattern: str = Field(default="shard-{index:06d}.tar", description="Shard file name pattern.")

    @field_validator("pattern")
    @classmethod
    def _pattern_names_each_shard(cls, pattern: str) -> str:
        """Every shard gets its own name, inside the output folder."""
        if "{index" not in pattern:
            raise ValueError("must contain {index} (e.g. 'shard-{index:06d}.tar')")
        try:
            names = {pattern.format(index=i) for i in (0, 1)}
            for name in names:
                safe_relpath(name)
        except UnsafePathError as exc:
            raise ValueError(f"must give a relative name inside the output folder: {exc}") from exc
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"is not a valid pattern with only {{index}}: {exc!r}") from exc
        if len(names) != 2:
            raise ValueError("must give a different name to each shard")
        return pattern


def sample_key(relpath: str) -> str:
    head, _, name = relpath.rpartition("/")
    stem = name.split(".", 1)[0]
    return f"{head}/{stem}" if head else stem


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_shards(input_dir: Path, output_dir: Path, params: ShardParams) -> list[Path]:
    """Pack every file under ``input_dir`` into shards in ``output_dir``; return their paths."""
    samples: dict[str, list[str]] = defaultdict(list)
    for dirpath, _dirs, files in os.walk(input_dir):
        for name in files:
            rel = (Path(dirpath) / name).relative_to(input_dir).as_posix()
            samples[sample_key(rel)].append(rel)
    output_dir.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    tar: tarfile.TarFile | None = None
    size = count = 0
    for key in sorted(samples):
        members = sorted(samples[key])
        sample_bytes = sum((input_dir / m).stat().st_size + 512 for m in members)
        full = tar is not None and (
            size + sample_bytes > params.target_bytes
            or (params.max_samples and count >= params.max_samples)
        )
        if tar is None or full:
            if tar is not None:
                tar.close()
            path = join_inside(output_dir, params.pattern.format(index=len(shards)))
            path.parent.mkdir(parents=True, exist_ok=True)
            shards.append(path)
            tar = tarfile.open(path, "w", format=tarfile.GNU_FORMAT)  # noqa: SIM115 - closed on rollover
            size = count = 0
        for m in members:
            src = input_dir / m
            with open(src, "rb") as f:
                tar.addfile(_tarinfo(m, src.stat().st_size), f)
        size += sample_bytes
        count += 1
    if tar is not None:
        tar.close()
    return shards
