"""``mlstage stage URI``: stage one dataset into the node-local cache."""

from __future__ import annotations

import time
from contextlib import ExitStack, nullcontext
from pathlib import Path

import typer

from mlstage.cli.output import emit_json
from mlstage.materialize import Materializer


def stage(
    uri: str = typer.Argument(
        ...,
        help="s3://bucket/prefix, https://host/shard-{000..009}.tar, clearml://<id>, "
        "clearml://<project>/<name>\\[@<version>], clearml+s3://bucket/path/<name>.<id>, "
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
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        max=256,
        show_default=False,
        help="Concurrent transfers, 1-256 (default: MLSTAGE_WORKERS or 16).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Stage one dataset into the node-local cache (fetching only what is missing)."""
    from mlstage.cache import LocalCache
    from mlstage.progress import ByteProgress, ListingStatus
    from mlstage.settings import get_settings
    from mlstage.sources import open_source
    from mlstage.transfer import Fetched

    if link and to is None:
        raise typer.BadParameter("--link needs --to DIR (the cache itself is never linked)")
    settings = get_settings()
    started = time.monotonic()
    # --to: copies written as objects are fetched (cache hits copied after); all or nothing
    cache_dir = settings.resolved_cache_dir
    placing = Materializer(to, link=link, clone_from=cache_dir) if to is not None else None
    with placing or nullcontext():
        source = open_source(uri)
        with ListingStatus(uri, lambda: getattr(source, "listed", None), enabled=not as_json):
            manifest = source.resolve()
        # a path too long under the cache or --to folder would fail once its bytes are fetched
        manifest.check_fits(cache_dir, what="cache folder (MLSTAGE_CACHE_DIR)")
        if to is not None:
            manifest.check_fits(to, what="--to folder")
        cache = LocalCache(cache_dir, limit_bytes=settings.cache_limit_bytes)
        delivered = [0]

        def on_object(fetched: Fetched) -> None:
            delivered[0] += 1
            if placing is not None:
                src = cache.object_path(fetched.digest)
                placing.add(fetched.entry.path, src, mirrored=fetched.mirrored)

        with ExitStack() as leased:  # kept from eviction until the copy at --to is whole
            with ByteProgress(
                manifest.total_bytes, f"staging {uri}", enabled=not as_json
            ) as progress:
                staged = leased.enter_context(
                    cache.use(
                        source,
                        manifest,
                        workers=workers or settings.workers,
                        part_size=settings.part_size,
                        on_bytes=progress.advance,
                        on_object=on_object,
                        mirror=placing.mirror if placing is not None else None,
                    )
                )
            path = staged.path
            if placing is not None and to is not None:
                placing.finish(cache.staged_files(staged.fingerprint))
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
        "repaired": staged.repaired,
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
