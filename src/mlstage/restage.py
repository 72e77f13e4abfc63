"""Re-staging a changed dataset: preprocess and publish the new version, warm caches, and
find (and, when asked, re-run) the benchmarks it made stale.

Exactly one caller re-stages a (dataset, version), however many events or machines ask: the
work starts with a claim in the state DB (see ``mlstage.state.claims``), renewed while the
work runs, so only a dead claimant's claim is ever taken over. Prefect-free; the
restage-dataset flow wraps ``restage`` and emits the events.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from mlstage import pipeline
from mlstage.cache import LocalCache
from mlstage.events import EventSpec, benchmark_stale, dataset_restaged
from mlstage.redact import MASK
from mlstage.specs import ModelSpec, SecretResolver
from mlstage.state import StateStore
from mlstage.state.claims import DEFAULT_LEASE_SECONDS, Coordination, default_owner
from mlstage.watch import WatchEntry

LOCAL = "local"
T = TypeVar("T")


class StepRunner(Protocol):
    """Runs one named step of a restage (``fn``) and returns what it returns: a flow runs
    each as its own task run, so the UI shows the steps; plain callers just call it."""

    def __call__(self, name: str, fn: Callable[[], T], /) -> T: ...


def run_inline(name: str, fn: Callable[[], T], /) -> T:
    """The default StepRunner: call the step."""
    return fn()


@dataclass(frozen=True)
class StaleRun:
    """The latest run of a benchmark (a model on a dataset), on a superseded version."""

    run_id: str
    model: str
    entrypoint: str
    params: dict[str, Any]
    consumed_version: str
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class RestageResult:
    """What one restage call did."""

    dataset: str
    version: str
    status: Literal["restaged", "duplicate", "superseded"]
    artifact_id: str | None = None
    warmed: list[str] = field(default_factory=list)
    stale: list[StaleRun] = field(default_factory=list)
    reran: list[pipeline.RunOutcome] = field(default_factory=list)
    not_rerun: list[tuple[StaleRun, str]] = field(default_factory=list)

    def events(self) -> list[EventSpec]:
        """``mlstage.benchmark.stale`` per stale run, then ``mlstage.dataset.restaged``."""
        if self.status != "restaged" or self.artifact_id is None:
            return []
        out = [
            benchmark_stale(s.run_id, s.model, self.dataset, s.consumed_version, self.version)
            for s in self.stale
        ]
        out.append(
            dataset_restaged(
                self.dataset,
                self.version,
                self.artifact_id,
                stale_runs=[s.run_id for s in self.stale],
                reran=[r.run_id for r in self.reran],
                warmed=self.warmed,
                not_rerun=[{"run_id": s.run_id, "reason": why} for s, why in self.not_rerun],
            )
        )
        return out


def stale_benchmarks(store: StateStore, dataset: str) -> list[StaleRun]:
    """The benchmarks of ``dataset`` whose latest run consumed a superseded version.

    The one definition of stale (``StateStore.stale_runs``, as ``mlstage lineage stale``
    lists them): a benchmark is a model on the dataset and only its latest run counts, so a
    run already re-run on the current version is not listed again, and re-running never
    duplicates.
    """
    return [
        StaleRun(
            r.run_id,
            r.model,
            r.entrypoint or "",
            dict(r.params),
            r.version or "",
            r.status,
            dict(r.metrics),
        )
        for r in store.stale_runs(dataset)
    ]


def masked_reason(run: StaleRun) -> str | None:
    """Why ``run`` cannot be re-run from the state DB, or None.

    The DB stores entrypoints and params with secrets masked; re-running with ``***`` in
    place of a token would fail or, worse, run with a wrong value.
    """
    if MASK in run.entrypoint:
        return "its stored entrypoint has masked secrets; re-run it with its real arguments"
    if MASK in json.dumps(run.params, default=str):
        return "its stored params have masked secrets; re-run it with its real params"
    return None


def warm(
    ws: pipeline.Workspace, prepared: pipeline.Prepared, caches: list[str]
) -> tuple[list[str], pipeline.Ready | None]:
    """Stage the artifact into each named cache: ``local`` is this node's, others are folders."""
    warmed: list[str] = []
    ready: pipeline.Ready | None = None
    for name in caches:
        if name == LOCAL:
            ready = pipeline.stage(ws, prepared)
        else:
            cache = LocalCache(Path(name).expanduser())
            cache.stage(
                ws.shared.source(prepared.artifact),
                prepared.artifact.manifest,
                workers=ws.settings.workers,
                part_size=ws.settings.part_size,
            )
        warmed.append(name)
    return warmed, ready


def restage(
    ws: pipeline.Workspace,
    entry: WatchEntry,
    version: str,
    *,
    rerun_stale: bool | None = None,
    owner: str | None = None,
    flow_run_id: str | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    resolve_secret: SecretResolver | None = None,
    step: StepRunner = run_inline,
) -> RestageResult:
    """Preprocess, publish and warm ``version`` of ``entry``'s dataset; list stale benchmarks
    and, when asked (``rerun_stale`` or the entry's option), re-run them on it.

    A run whose parameters came from Secret blocks (recorded as ``secret:<block>``) re-runs
    with them loaded again by ``resolve_secret``; without one it is listed as not re-run.

    ``duplicate``: another caller claimed this version. ``superseded``: the source moved on
    since the change was announced (the watcher announces the newer version in turn). The
    claim is renewed while the work runs; another caller takes it over only when it was not
    renewed for ``lease_seconds`` (this process died). ``step`` runs each step (resolve,
    preprocess, warm-caches, find-stale, one rerun-MODEL per re-run) while the claim is held.
    """
    name = entry.name
    owner = owner or default_owner()
    coord = Coordination(ws.state)
    if not coord.claim(name, version, owner=owner, lease_seconds=lease_seconds):
        return RestageResult(name, version, "duplicate")
    try:
        with coord.hold(name, version, owner=owner, lease_seconds=lease_seconds):
            result, detail = _restage_claimed(
                ws, entry, version, rerun_stale, flow_run_id, resolve_secret, step
            )
    except BaseException as exc:
        coord.finish(name, version, "failed", f"{type(exc).__name__}: {exc}"[:2000], owner=owner)
        raise
    status = "done" if result.status == "restaged" else result.status
    coord.finish(name, version, status, detail, owner=owner)
    return result


def _restage_claimed(
    ws: pipeline.Workspace,
    entry: WatchEntry,
    version: str,
    rerun_stale: bool | None,
    flow_run_id: str | None,
    resolve_secret: SecretResolver | None,
    step: StepRunner = run_inline,
) -> tuple[RestageResult, str | None]:
    """The work ``restage`` does once it holds the claim; the result and the claim's detail."""
    name = entry.name
    resolved = step("resolve", lambda: pipeline.resolve(ws, entry.dataset))
    if resolved.version != version:
        return RestageResult(name, version, "superseded"), f"source is now at {resolved.version}"
    # warming this node's cache is staging it here: from the recipe's output, no read back
    prepared = step(
        "preprocess",
        lambda: pipeline.preprocess(ws, resolved, stage_here=LOCAL in entry.warm_caches),
    )
    result = RestageResult(name, version, "restaged", prepared.artifact.artifact_id)
    result.warmed, ready = step("warm-caches", lambda: warm(ws, prepared, entry.warm_caches))
    result.stale = step("find-stale", lambda: stale_benchmarks(ws.state, name))
    if result.stale and (entry.rerun_stale if rerun_stale is None else rerun_stale):
        for s in result.stale:
            why = masked_reason(s)
            if why is not None:
                result.not_rerun.append((s, why))
                continue
            try:
                model = ModelSpec.from_record(
                    name=s.model, dataset=name, entrypoint=s.entrypoint, params=s.params
                )
            except ValueError as exc:  # recorded before the spec's rules: never re-run
                why = f"its recorded model is no valid spec today ({type(exc).__name__})"
                result.not_rerun.append((s, why))
                continue
            if model.secrets and resolve_secret is None:
                why = "its params come from Secret blocks, and this caller cannot load them"
                result.not_rerun.append((s, why))
                continue

            def rerun(model: ModelSpec = model) -> pipeline.RunOutcome:
                nonlocal ready
                ready = ready or pipeline.stage(ws, prepared)
                return pipeline.run(
                    ws, model, ready, flow_run_id=flow_run_id, resolve_secret=resolve_secret
                )

            result.reran.append(step(f"rerun-{s.model}", rerun))
    return result, None


def rerun_table(result: RestageResult) -> list[dict[str, Any]]:
    """One row per stale benchmark: the version and score it had, and what its re-run on the
    new version scored (or why it was not re-run)."""
    reran = {r.model: r for r in result.reran}
    skipped = {s.run_id: why for s, why in result.not_rerun}
    rows = []
    for s in result.stale:
        r = reran.get(s.model)
        rows.append(
            {
                "model": s.model,
                "stale_run": s.run_id,
                "consumed_version": s.consumed_version[:12],
                "score_before": s.metrics.get("score"),
                "rerun": r.run_id if r else None,
                "rerun_status": r.status if r else skipped.get(s.run_id, "not re-run"),
                "score_now": r.metrics.get("score") if r else None,
                "version_now": result.version[:12],
            }
        )
    return rows
