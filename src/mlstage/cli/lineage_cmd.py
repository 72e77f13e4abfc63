"""``mlstage lineage``: which exact data every benchmark run consumed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from mlstage.cli.output import emit_json, emit_table

if TYPE_CHECKING:
    from mlstage.state import LineageRow, StateStore

app = typer.Typer(
    no_args_is_help=False, invoke_without_command=True, help="What each benchmark run consumed."
)

RUN_COLUMNS = [
    "run_id",
    "model",
    "dataset",
    "version",
    "artifact_id",
    "cache_hit",
    "data_from",
    "bytes_fetched",
    "status",
    "metrics",
]
STALE_COLUMNS = [*RUN_COLUMNS[:4], "latest_version", *RUN_COLUMNS[4:]]


def _store() -> StateStore:
    from mlstage.settings import get_settings
    from mlstage.state import StateStore

    return StateStore.open(get_settings().resolved_state_url)


def _rows(
    rows: list[LineageRow], as_json: bool, title: str, columns: list[str] | None = None
) -> None:
    dicts = [r.to_dict() for r in rows]
    if as_json:
        emit_json(dicts)
        return
    for d in dicts:
        d["run_id"] = d["run_id"][:12]
        d["version"] = (d["version"] or "")[:12]
        d["artifact_id"] = (d["artifact_id"] or "")[:12]
        d["latest_version"] = (d["latest_version"] or "")[:12]
    emit_table(dicts, columns or RUN_COLUMNS, title)


def _json(ctx: typer.Context, as_json: bool) -> bool:
    """``--json`` given to the subcommand or before it (``mlstage lineage --json runs``)."""
    return as_json or bool(ctx.obj and ctx.obj.get("json"))


@app.callback()
def default(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Without a subcommand: every run with what it consumed."""
    ctx.obj = {**(ctx.obj or {}), "json": as_json}
    if ctx.invoked_subcommand is None:
        _rows(_store().runs(), as_json, "benchmark runs and what they consumed")


@app.command("runs")
def runs(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json"),
    sweep: str | None = typer.Option(None, help="Only this sweep id."),
) -> None:
    """Every run with the dataset version and artifact it consumed."""
    _rows(
        _store().runs(sweep_id=sweep), _json(ctx, as_json), "benchmark runs and what they consumed"
    )


@app.command("run")
def run(ctx: typer.Context, run_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """One run (by mlstage run id, Prefect flow run id, or a unique id prefix)."""
    from mlstage.errors import ConfigError
    from mlstage.state.store import MIN_ID_PREFIX

    row = _store().run(run_id)
    if row is None:
        short = len(run_id) < MIN_ID_PREFIX
        raise ConfigError(
            f"no run {run_id!r} in the state DB",
            hint=f"a prefix needs {MIN_ID_PREFIX} or more characters"
            if short
            else "list them with: mlstage lineage runs",
        )
    if _json(ctx, as_json):
        emit_json(row.to_dict())
    else:
        for k, v in row.to_dict().items():
            typer.echo(f"{k:>14}: {v}")


@app.command("consumers")
def consumers(
    ctx: typer.Context,
    version: str | None = typer.Option(None, help="A dataset version (fingerprint)."),
    artifact: str | None = typer.Option(None, help="An artifact id."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Runs that consumed a given dataset version or artifact."""
    from mlstage.errors import ConfigError

    if not version and not artifact:
        raise ConfigError("give --version or --artifact")
    _rows(
        _store().runs_consuming(version=version, artifact_id=artifact),
        _json(ctx, as_json),
        "runs that consumed it",
    )


@app.command("stale")
def stale(
    ctx: typer.Context,
    dataset: str | None = typer.Option(None, help="Only this dataset."),
    history: bool = typer.Option(
        False,
        "--history",
        help="Every run that consumed a superseded version, including benchmarks re-run since.",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Stale benchmarks: the latest run of a model on a dataset consumed a superseded version.

    Superseded: not the dataset's current version (the one a resolve saw last). The
    restage-dataset flow re-runs exactly these.
    """
    rows = _store().stale_runs(dataset, history=history)
    title = "runs on superseded versions" if history else "stale benchmarks (latest runs)"
    _rows(rows, _json(ctx, as_json), title, STALE_COLUMNS)


@app.command("versions")
def versions(
    ctx: typer.Context, dataset: str, as_json: bool = typer.Option(False, "--json")
) -> None:
    """A dataset's version history (oldest first; the current one marked)."""
    rows = [v.to_dict() for v in _store().history(dataset)]
    if _json(ctx, as_json):
        emit_json(rows)
        return
    for d in rows:
        d["version"] = d["version"][:12]
        d["current"] = "yes" if d["current"] else ""
    emit_table(
        rows,
        ["version", "current", "source_uri", "files", "bytes", "first_seen", "last_seen", "runs"],
        f"versions of {dataset}",
    )
