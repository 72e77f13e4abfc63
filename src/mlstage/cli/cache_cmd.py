"""``mlstage cache``: inspect and manage the node-local cache."""

from __future__ import annotations

from dataclasses import asdict

import typer

from mlstage.cli.output import emit_json, emit_table

app = typer.Typer(no_args_is_help=True, help="The node-local cache.")


def _cache():  # type: ignore[no-untyped-def]
    from mlstage.cache import LocalCache
    from mlstage.settings import get_settings

    s = get_settings()
    return LocalCache(s.resolved_cache_dir, limit_bytes=s.cache_limit_bytes)


@app.command("stats")
def stats(as_json: bool = typer.Option(False, "--json")) -> None:
    """Datasets, objects and bytes held, and the limit."""
    st = asdict(_cache().stats())
    if as_json:
        emit_json(st)
    else:
        for k, v in st.items():
            typer.echo(f"{k:>12}: {v}")


@app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json")) -> None:
    """Datasets in the cache, least recently used first."""
    rows = [asdict(r) for r in _cache().index.datasets_lru()]
    if as_json:
        emit_json(rows)
    else:
        emit_table(
            rows, ["fingerprint", "source", "files", "bytes", "last_used"], "cached datasets"
        )


@app.command("evict")
def evict(
    fingerprint: str | None = typer.Argument(
        None, help="Evict this dataset; without it, evict LRU down to --to-bytes."
    ),
    to_bytes: int | None = typer.Option(
        None, "--to-bytes", help="Target size (default: the cache limit)."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Evict datasets that are not in use."""
    cache = _cache()
    if fingerprint:
        dropped = [fingerprint] if cache.drop(fingerprint) else []
    else:
        dropped = cache.evict(target_bytes=to_bytes)
    if as_json:
        emit_json({"evicted": dropped})
    else:
        typer.echo(f"evicted {len(dropped)} dataset(s)")
