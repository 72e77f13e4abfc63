"""Tiny model entrypoints and recipes for tests and benchmarks (importable by workers and pods)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def count_files(
    data_dir: Path, seconds: float = 0.0, fail: bool = False, **params: Any
) -> dict[str, Any]:
    """A "model": counts its staged files, works ``seconds``, fails on request.

    Reports when it started and finished (``started_at``, ``finished_at``, epoch seconds) and in
    which process, so callers can measure time to first step, overlap and where it ran.
    """
    started_at = time.time()
    if fail:
        raise RuntimeError("this model fails on purpose")
    files = sum(1 for p in Path(data_dir).rglob("*") if p.is_file())
    if seconds:
        time.sleep(seconds)
    return {
        "score": files,
        "started_at": started_at,
        "finished_at": time.time(),
        "pid": os.getpid(),
    }


def pid_recipe(input_dir: Path, output_dir: Path, tag: str = "x") -> None:
    """A user recipe that copies nothing and records which process ran it."""
    files = sum(1 for p in Path(input_dir).rglob("*") if p.is_file())
    (Path(output_dir) / "ran.txt").write_text(f"{tag} pid={os.getpid()} files={files}\n")


def scaled_recipe(input_dir: Path, output_dir: Path, factor: int = 1) -> None:
    """A user recipe with a typed parameter (for parameter-type checks)."""
    (Path(output_dir) / "factor.txt").write_text(str(factor * 2))


def slow_copy(input_dir: Path, output_dir: Path, seconds: float = 0.0) -> None:
    """A user recipe that copies its input and takes ``seconds`` (a slow preprocessing step)."""
    import shutil

    shutil.copytree(input_dir, output_dir, dirs_exist_ok=True)
    time.sleep(seconds)


def make_dataset(root: Path, name: str, files: int, *, lines: int = 20) -> Path:
    """A folder ``root/name`` of ``files`` small text files: a dataset for flow tests."""
    folder = root / name
    folder.mkdir(parents=True)
    for i in range(files):
        (folder / f"s{i:04d}.txt").write_text(f"{name} {i}\n" * lines)
    return folder
