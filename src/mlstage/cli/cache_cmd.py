"""``mlstage cache``: inspect and manage the node-local cache."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

import typer

from mlstage.cli.output import emit_json, emit_table

if TYPE_CHECKING:
    from mlstage.cache import LocalCache

app = typer.Typer(no_args_is_help=True, help="The node-local cache.")

JSON = typer.Option(False, "--json", help="Print JSON.")


def _cache() -> LocalCache:
    from mlstage.settings import get_settings, open_cache

    return open_cache(get_settings())


def _dataset(cache: LocalCache, given: str) -> str:
    """The cached dataset ``given`` names: its fingerprint, or a unique prefix as long as the
    state DB's id prefixes (as ``ls`` and ``stage`` print them)."""
    from mlstage.errors import ConfigError
    from mlstage.state.store import MIN_ID_PREFIX

    if len(given) < MIN_ID_PREFIX:
        raise ConfigError(
            f"{given!r} is too short to name a cached dataset",
            hint=f"give {MIN_ID_PREFIX} or more characters of its fingerprint (mlstage cache ls)",
        )
    matches = [r.fingerprint for r in cache.index.datasets_lru() if r.fingerprint.startswith(given)]
    if not matches:
        raise ConfigError(
            f"dataset {given} is not in the cache at {cache.root}",
            hint="mlstage cache ls lists what it holds",
        )
    if len(matches) > 1:
        raise ConfigError(
            f"{given!r} names {len(matches)} cached datasets", hint="give more characters"
        )
    return matches[0]


@app.command("stats")
def stats(as_json: bool = JSON) -> None:
    """Datasets, objects and bytes held, the limit and live leases (from the index, no scan)."""
    st = asdict(_cache().stats())
    if as_json:
        emit_json(st)
    else:
        for k, v in st.items():
            typer.echo(f"{k:>12}: {v}")


@app.command("ls")
def ls(as_json: bool = JSON) -> None:
    """Datasets in the cache, least recently used first, with their recorded leases."""
    cache = _cache()
    leases: dict[str, list[dict[str, object]]] = {}
    for lease in cache.index.leases():
        leases.setdefault(lease.fingerprint, []).append(asdict(lease))
    rows = []
    for r in cache.index.datasets_lru():
        row = asdict(r)
        row["path"] = str(cache.dataset_path(r.fingerprint))
        row["leases"] = leases.get(r.fingerprint, [])
        rows.append(row)
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        row["last_used"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["last_used"]))
        row["leases"] = len(row["leases"])  # type: ignore[arg-type]
    emit_table(
        rows, ["fingerprint", "source", "files", "bytes", "last_used", "leases"], "cached datasets"
    )


@app.command("verify")
def verify(
    repair: bool = typer.Option(
        False, "--repair", help="Re-fetch what is corrupt or missing from each dataset's source."
    ),
    fast: bool = typer.Option(
        False,
        "--fast",
        help="Check sizes and file metadata (each tree against its seal) and hash only files "
        "whose metadata changed, instead of hashing every object.",
    ),
    as_json: bool = JSON,
) -> None:
    """Hash every object and check every tree; exit 1 if a problem remains unrepaired."""
    from mlstage.progress import StepProgress

    with StepProgress(enabled=not as_json) as progress:
        report = _cache().verify(repair=repair, full=not fast, on_progress=progress.update)
    if as_json:
        emit_json(report.to_dict())
    else:
        for p in report.problems:
            state = "repaired" if p.repaired else "PROBLEM"
            where = f"{(p.fingerprint or '')[:12]} {p.path or ''}".strip()
            typer.echo(f"{state:>8}: {p.kind}: {where}: {p.detail}")
        typer.echo(
            f"checked {report.datasets} dataset(s), {report.files} file(s), "
            f"{report.objects} object(s), {report.bytes_hashed:,} bytes hashed; "
            f"{len(report.problems)} problem(s), {len(report.unrepaired)} unrepaired"
        )
    if report.unrepaired:
        sys.exit(1)  # typer.Exit's code is lost under main()'s standalone_mode=False


@app.command("gc")
def gc(as_json: bool = JSON) -> None:
    """Reclaim what crashes left: dead stagings and leases, unused objects, stray folders."""
    report = asdict(_cache().gc())
    if as_json:
        emit_json(report)
    else:
        for k, v in report.items():
            typer.echo(f"{k:>20}: {len(v) if isinstance(v, list) else v}")


@app.command("evict")
def evict(
    fingerprint: str | None = typer.Argument(
        None, help="Evict this dataset; without it, evict LRU down to --to-bytes."
    ),
    to_bytes: int | None = typer.Option(
        None, "--to-bytes", min=0, help="Target size (default: the cache limit)."
    ),
    as_json: bool = JSON,
) -> None:
    """Evict datasets that are not in use (leased datasets are skipped, exit 1 for one asked)."""
    cache = _cache()
    if fingerprint:
        fingerprint = _dataset(cache, fingerprint)
        dropped = [fingerprint] if cache.drop(fingerprint) else []
    else:
        dropped = cache.evict(target_bytes=to_bytes)
    st = cache.stats()
    if as_json:
        emit_json({"evicted": dropped, "bytes": st.bytes, "objects": st.objects})
    else:
        typer.echo(f"evicted {len(dropped)} dataset(s); {st.bytes:,} bytes remain")
    if fingerprint and not dropped:
        typer.echo(f"{fingerprint[:12]} is in use (leased); not evicted", err=True)
        sys.exit(1)


@app.command("lease")
def lease(
    fingerprint: str = typer.Argument(..., help="The dataset to keep."),
    ttl: float = typer.Option(..., "--ttl", min=1, help="Seconds until the lease lapses."),
    holder: str = typer.Option("", "--holder", help="Who holds it (default host:pid)."),
    as_json: bool = JSON,
) -> None:
    """Record a lease that outlives this command (e.g. between a job's steps)."""
    cache = _cache()
    held = cache.hold(_dataset(cache, fingerprint), ttl, holder=holder)
    if as_json:
        emit_json(asdict(held))
    else:
        typer.echo(held.id)


@app.command("release")
def release(lease_id: int = typer.Argument(...), as_json: bool = JSON) -> None:
    """End a recorded lease."""
    released = _cache().release(lease_id)
    if as_json:
        emit_json({"released": released})
    elif not released:
        typer.echo(f"lease {lease_id} was already gone", err=True)
