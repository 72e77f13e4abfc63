"""``mlstage stage URI``: stage one dataset into the node-local cache."""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import typer

from mlstage.cli.output import emit_json
from mlstage.errors import ConfigError

_TO_HINT = "choose an empty or new folder on a writable filesystem for --to"


def check_destination(dest: Path) -> None:
    """Refuse a --to folder that is not empty or cannot be written, before any byte moves."""
    try:
        if dest.is_symlink():
            raise ConfigError(f"{dest} is a link", hint=_TO_HINT)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise ConfigError(f"{dest} exists and is not an empty folder", hint=_TO_HINT)
        parent = dest.absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        pseudo = parent.resolve().parts[1:2] in (("proc",), ("sys",), ("dev",))
    except OSError as exc:
        raise ConfigError(
            f"{dest}: cannot inspect it ({exc.strerror or exc})", hint=_TO_HINT
        ) from exc
    if pseudo or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{dest}: cannot create it in {parent}", hint=_TO_HINT)


def _copy(s: str, d: str) -> None:
    # copyfile uses copy_file_range/sendfile where the kernel has them (reflinks on btrfs/xfs)
    shutil.copyfile(s, d)
    os.chmod(d, 0o644)


def materialize(src: Path, dest: Path, *, link: bool = False, workers: int = 8) -> None:
    """Put the staged tree at ``dest`` atomically: private copies, or hard links if ``link``.

    Hard links share the cache's read-only files: writing through them would corrupt the cache,
    so they are opt-in. Copies run on ``workers`` threads (the kernel copies; the GIL is free).
    """
    check_destination(dest)
    tmp = dest.with_name(f".{dest.name}.mlstage-tmp-{os.getpid()}")

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            _copy(s, d)

    place = link_or_copy if link else _copy
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        pairs: list[tuple[str, str]] = []
        for dirpath, _dirs, files in os.walk(src):
            rel = os.path.relpath(dirpath, src)
            target = str(tmp) if rel == "." else os.path.join(tmp, rel)
            os.mkdir(target, 0o755)
            pairs += [(os.path.join(dirpath, f), os.path.join(target, f)) for f in files]
        with ThreadPoolExecutor(max(1, min(workers, len(pairs)))) as pool:
            list(pool.map(lambda pair: place(*pair), pairs))  # re-raises the first error
        if dest.exists():
            dest.rmdir()
        os.rename(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(
            f"{dest}: cannot materialise the dataset there ({exc.strerror or exc})", hint=_TO_HINT
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def stage(
    uri: str = typer.Argument(
        ...,
        help="s3://bucket/prefix, https://host/shard-{000..009}.tar, clearml://<id>, "
        "clearml://<project>/<name>[@<version>], clearml+s3://bucket/path/<name>.<id>, "
        "clearml+file:///path/<name>.<id>, or a folder",
    ),
    to: Path | None = typer.Option(
        None, "--to", help="Also materialise the dataset at this folder."
    ),
    link: bool = typer.Option(
        False,
        "--link",
        help="With --to: hard-link the cache's files instead of copying them. They are "
        "read-only and shared with the cache: never write to them.",
    ),
    workers: int = typer.Option(
        0, "--workers", min=0, help="Concurrent transfers (default: MLSTAGE_WORKERS or 16)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Stage one dataset into the node-local cache (fetching only what is missing)."""
    from mlstage.cache import LocalCache
    from mlstage.progress import ByteProgress
    from mlstage.settings import get_settings
    from mlstage.sources import open_source

    settings = get_settings()
    started = time.monotonic()
    if to is not None:
        check_destination(to)
    source = open_source(uri)
    manifest = source.resolve()
    cache = LocalCache(settings.resolved_cache_dir, limit_bytes=settings.cache_limit_bytes)
    delivered = [0]

    def on_object(_fetched: object) -> None:
        delivered[0] += 1

    with ByteProgress(manifest.total_bytes, f"staging {uri}", enabled=not as_json) as progress:
        staged = cache.stage(
            source,
            manifest,
            workers=workers or settings.workers,
            part_size=settings.part_size,
            on_bytes=progress.advance,
            on_object=on_object,
        )
    path = staged.path
    if to is not None:
        materialize(staged.path, to, link=link)
        path = to
    result = {
        "uri": uri,
        "version": staged.fingerprint,
        "files": staged.files,
        "bytes": staged.bytes,
        "bytes_fetched": staged.bytes_fetched,
        "objects_fetched": staged.objects_fetched,
        "cache_hits": staged.files if staged.hit else staged.files - delivered[0],
        "hit": staged.hit,
        "retries": staged.retries,
        "seconds": round(time.monotonic() - started, 3),
        "path": str(path),
    }
    if as_json:
        emit_json(result)
    else:
        what = "cache hit" if staged.hit else f"fetched {staged.bytes_fetched:,} bytes"
        typer.echo(
            f"{uri}: {staged.files} files, {staged.bytes:,} bytes ({what}) in {result['seconds']} s -> {path}"
        )
