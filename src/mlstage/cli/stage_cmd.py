"""``mlstage stage URI``: stage one dataset into the node-local cache."""

from __future__ import annotations

import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from mlstage.cli.output import emit_json
from mlstage.errors import ConfigError
from mlstage.materialize import Materializer

if TYPE_CHECKING:
    from mlstage.cache import LocalCache, StagedDataset


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
    at: str | None = typer.Option(
        None,
        "--at",
        help="The version to stage (a fingerprint, or 6 or more of its first characters, as "
        "printed as 'version'). Held by this node: handed out without listing the source. "
        "Otherwise the source is listed and must still be at that version.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Stage one dataset into the node-local cache (fetching only what is missing)."""
    from mlstage.progress import ByteProgress, ListingStatus
    from mlstage.settings import get_settings, open_cache
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
        cache = open_cache(settings)
        held = _held_version(cache, at) if at is not None else None
        if held is not None:  # by version, without listing the source
            with cache.lease(held.fingerprint) as path:
                if placing is not None and to is not None:
                    placing.finish(cache.staged_files(held.fingerprint))
                    path = to
            _report(uri, held, 0, started, path, as_json)
            return
        source = open_source(uri)
        with ListingStatus(uri, lambda: getattr(source, "listed", None), enabled=not as_json):
            manifest = source.resolve()
        if at is not None and not manifest.fingerprint.startswith(at):
            raise ConfigError(
                f"{uri} is now at version {manifest.fingerprint[:16]}, not {at}",
                hint="this node no longer holds that version; stage the current one (without --at)",
            )
        # a path too long under the cache or --to folder would fail once its bytes are fetched
        manifest.check_fits(cache_dir, what="cache folder (MLSTAGE_CACHE_DIR)")
        if to is not None:
            manifest.check_fits(to, what="--to folder")
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
    _report(uri, staged, delivered[0], started, path, as_json)


def _held_version(cache: LocalCache, at: str) -> StagedDataset | None:
    """The cached dataset ``at`` (a fingerprint or unique prefix) names, handed out (its tree
    checked), or None when this node does not hold it."""
    from mlstage.state.store import MIN_ID_PREFIX

    if len(at) < MIN_ID_PREFIX or not all(c in "0123456789abcdef" for c in at):
        raise ConfigError(
            f"--at {at!r} is not a version",
            hint=f"give {MIN_ID_PREFIX} or more hex characters of the version stage printed",
        )
    matches = [r.fingerprint for r in cache.index.datasets_lru() if r.fingerprint.startswith(at)]
    if len(matches) > 1:
        raise ConfigError(f"--at {at!r} names {len(matches)} cached versions", hint="give more")
    return cache.handout(matches[0]) if matches else None


def _report(
    uri: str, staged: StagedDataset, delivered: int, started: float, path: Path, as_json: bool
) -> None:
    result = {
        "uri": uri,
        "version": staged.fingerprint,
        "files": staged.files,
        "bytes": staged.bytes,
        "bytes_fetched": staged.bytes_fetched,
        "objects_fetched": staged.objects_fetched,
        "cache_hits": staged.files if staged.hit else staged.files - delivered,
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
            f"{uri}: {staged.files} files, {staged.bytes:,} bytes ({what}) in "
            f"{result['seconds']} s -> {path}"
        )
