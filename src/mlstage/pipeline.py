"""The six verbs of the data path, as plain functions over a Workspace.

    DatasetSpec --resolve--> Manifest --preprocess--> Artifact --publish--> shared tier
    lineage DB <--record-- BenchmarkRun <--run-- StagedDataset <--stage-----------'

``resolve``, ``preprocess`` (which calls ``publish`` for a version the shared tier lacks),
``stage``, ``run`` (which calls ``record`` when the model returns or fails), each below in
that order. Flows are thin wrappers over these; everything here runs and is tested without
Prefect.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlstage.cache import LocalCache, StagedDataset
from mlstage.errors import ConfigError, MlstageError
from mlstage.manifest import Manifest
from mlstage.recipes import Recipe, load_recipe
from mlstage.redact import MASK, scrub_params_json, scrub_text, scrub_uri
from mlstage.runner import Metrics, check_entrypoint, run_entrypoint
from mlstage.settings import Settings, get_settings, open_cache
from mlstage.shared import Artifact, SharedTier, open_shared
from mlstage.sources import check_uri, open_source
from mlstage.sources.base import Source
from mlstage.specs import DatasetSpec, ModelSpec, SecretResolver, SweepSpec
from mlstage.state import StateStore
from mlstage.state.models import BenchmarkRun

log = logging.getLogger("mlstage.pipeline")


@dataclass
class Workspace:
    """This node's view of the world: its cache, the shared tier, the state DB."""

    cache: LocalCache
    shared: SharedTier
    state: StateStore
    settings: Settings = field(default_factory=get_settings)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Workspace:
        s = settings or get_settings()
        return cls(
            cache=open_cache(s),
            shared=open_shared(s.resolved_shared),
            state=StateStore.open(s.resolved_state_url),
            settings=s,
        )


@dataclass(frozen=True)
class Resolved:
    spec: DatasetSpec
    source: Source
    manifest: Manifest
    version_id: int
    new_version: bool

    @property
    def version(self) -> str:
        return self.manifest.fingerprint


@dataclass(frozen=True)
class Prepared:
    """A dataset's artifact on the shared tier, and whether this call made it."""

    dataset: str
    version: str
    artifact: Artifact
    skipped: bool
    seconds: float
    # staged into this node's cache from the recipe's output (``stage_here``), and its record
    staged_here: tuple[StagedDataset, int] | None = None


@dataclass(frozen=True)
class Ready:
    """An artifact staged on this node, recorded in the state DB."""

    prepared: Prepared
    staged: StagedDataset
    stage_record_id: int
    ready_at: float = field(default_factory=time.time)

    @property
    def dataset(self) -> str:
        return self.prepared.dataset

    @property
    def version(self) -> str:
        return self.prepared.version

    @property
    def artifact_id(self) -> str:
        return self.prepared.artifact.artifact_id


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    model: str
    dataset: str
    status: str
    metrics: Metrics
    error: str | None
    ready: Ready | None


def validate_datasets(datasets: Sequence[DatasetSpec]) -> list[str]:
    """Every problem with these datasets found without I/O: unhandled URIs, bad recipes."""
    problems: list[str] = []
    for d in datasets:
        try:
            check_uri(d.uri)
        except MlstageError as exc:
            problems.append(f"dataset {d.name}: {exc}")
        try:
            load_recipe(d.recipe)
        except MlstageError as exc:
            problems.append(f"dataset {d.name}: {exc}")
    return problems


def validate_models(models: Sequence[ModelSpec]) -> list[str]:
    """Every model whose entrypoint cannot start (does not import, or a command without {data_dir})."""
    problems: list[str] = []
    for m in models:
        try:
            check_entrypoint(m.entrypoint, dict.fromkeys(m.param_names))
        except MlstageError as exc:
            problems.append(f"model {m.name}: {exc}")
    return problems


def validate_sweep(spec: SweepSpec) -> list[str]:
    """Every problem that would stop the sweep, found before any data moves: one line each."""
    return validate_datasets(spec.datasets) + validate_models(spec.models)


def resolve(ws: Workspace, spec: DatasetSpec) -> Resolved:
    """List the source (no bytes move) and record the version it is at.

    A dataset whose paths would be too long in this node's cache is refused here, before
    anything is fetched or recorded.
    """
    source = open_source(spec.uri)
    manifest = source.resolve()
    manifest.check_fits(ws.cache.root, what="cache folder (MLSTAGE_CACHE_DIR)")
    row, new = ws.state.record_version(
        spec.name, manifest.fingerprint, spec.uri, len(manifest), manifest.total_bytes
    )
    assert row.id is not None
    return Resolved(spec, source, manifest, row.id, new)


def preprocess(ws: Workspace, resolved: Resolved, *, stage_here: bool = False) -> Prepared:
    """Apply the spec's recipe and ``publish`` the artifact, unless the shared tier has it.

    ``stage_here``: this node stages the artifact next, so the recipe's output also goes into
    its cache, recorded as this node's staging, which ``stage`` then returns: the artifact is
    not read back from the shared tier.
    """
    started = time.monotonic()
    recipe = load_recipe(resolved.spec.recipe)
    artifact = ws.shared.get(recipe.artifact_id(resolved.version))
    skipped = artifact is not None
    staged: StagedDataset | None = None
    if artifact is None:
        with (
            ws.cache.use(
                resolved.source,
                resolved.manifest,
                workers=ws.settings.workers,
                part_size=ws.settings.part_size,
            ) as raw,
            ws.cache.scratch("recipe") as out,  # on the cache's disk, not a pod's small /tmp
        ):
            recipe.apply(raw.path, out)
            artifact = publish(ws, resolved, recipe, out)
            staged = _stage_output(ws, artifact, out) if stage_here else None
        if not raw.hit:  # staged for the recipe alone: no lasting raw copy (see _drop_raw)
            _drop_raw(ws, raw.fingerprint)
    digest = artifact.manifest.sha256()
    ws.state.record_artifact(
        artifact.artifact_id,
        resolved.version_id,
        (recipe.name, recipe.version, recipe.params_json),
        artifact.uri,
        digest,
        len(artifact.manifest),
        artifact.bytes,
    )
    made_here = None
    if staged is not None:
        made_here = (
            staged,
            _record_stage(ws, artifact.artifact_id, staged, staged.seconds, made_here=True),
        )
    return Prepared(
        resolved.spec.name,
        resolved.version,
        artifact,
        skipped,
        time.monotonic() - started,
        made_here,
    )


def publish(ws: Workspace, resolved: Resolved, recipe: Recipe, out: Path) -> Artifact:
    """File ``out``, the recipe's output for this dataset version, on the shared tier as its
    artifact (atomically: readers see all of it or none), with what it was made from. What is
    written out is scrubbed of credentials; the artifact's id uses the real parameters."""
    if not any(out.iterdir()):
        raise ConfigError(f"recipe {recipe.name!r} produced no files for {resolved.spec.name}")
    info: dict[str, Any] = {
        "dataset": resolved.spec.name,
        "source": scrub_uri(resolved.spec.uri),
        "version": resolved.version,
        "recipe": recipe.name,
        "recipe_version": recipe.version,
        "params": scrub_params_json(recipe.params_json),
    }
    return ws.shared.publish(recipe.artifact_id(resolved.version), out, info)


def _drop_raw(ws: Workspace, fingerprint: str) -> None:
    """Remove the raw source a preprocessing staged only to read it once, unless another
    process uses it meanwhile (then it stays, as any dataset, until evicted). Objects the
    artifact shares with it (an identity recipe's) stay with the artifact."""
    try:
        if not ws.cache.drop(fingerprint):
            log.info("raw copy %s kept: in use by another process", fingerprint[:12])
    except ConfigError:
        pass  # gone already (evicted, or dropped by another preprocessing)


def _stage_output(ws: Workspace, artifact: Artifact, out: Path) -> StagedDataset | None:
    """Stage ``artifact`` into this node's cache from ``out``, the recipe output it was
    published from, filed as if fetched from the shared tier (same bytes: checked against the
    artifact's checksums). Best effort: when ``out`` is not what was published (another node
    published first, from a recipe that is not deterministic), None, and ``stage`` fetches it."""
    from mlstage.sources.local import FolderSource

    published = ws.shared.source(artifact)
    try:
        return ws.cache.stage(
            FolderSource(out, uri=published.uri),
            artifact.manifest,
            workers=ws.settings.workers,
            part_size=ws.settings.part_size,
        )
    except MlstageError as exc:
        log.info("%s: not staged from the recipe's output (%s)", artifact.artifact_id, exc)
        return None


def _record_stage(
    ws: Workspace,
    artifact_id: str,
    staged: StagedDataset,
    seconds: float,
    *,
    made_here: bool = False,
) -> int:
    """Record a staging onto this node; ``made_here``: filed from this node's own recipe output,
    so none of its bytes came over the network from the shared tier."""
    rec = ws.state.record_stage(
        artifact_id,
        hit=staged.hit,
        bytes_fetched=staged.bytes_fetched,
        objects_fetched=staged.objects_fetched,
        first_object_seconds=staged.first_object_seconds,
        ready_seconds=seconds,
        bytes_from_shared=0 if made_here else None,
    )
    assert rec.id is not None
    return rec.id


def find_prepared(ws: Workspace, artifact_id: str) -> Prepared:
    """A published artifact by id, as ``preprocess`` would have returned it (nothing is made)."""
    started = time.monotonic()
    artifact = ws.shared.get(artifact_id)
    if artifact is None:
        raise ConfigError(
            f"artifact {artifact_id} is not on the shared tier {ws.shared.uri}",
            hint="preprocess its dataset first (preprocess-dataset), or check the shared tier",
        )
    return Prepared(
        str(artifact.info.get("dataset", artifact_id)),
        str(artifact.info.get("version", "")),
        artifact,
        True,
        time.monotonic() - started,
    )


def staged_here(ws: Workspace, prepared: Prepared) -> Ready | None:
    """The staging ``preprocess(stage_here=True)`` made on this node, while the cache holds it."""
    if prepared.staged_here is None:
        return None
    staged, record_id = prepared.staged_here
    if ws.cache.lookup(staged.fingerprint) is None:
        return None
    return Ready(prepared, staged, record_id)


def stage(ws: Workspace, prepared: Prepared, **kwargs: Any) -> Ready:
    """Bring an artifact onto this node's cache (fetched once, however many callers) and record it.

    After ``preprocess(stage_here=True)`` that staging is the answer (and the record), while
    the cache still holds it.
    """
    started = time.monotonic()
    ready = None if kwargs else staged_here(ws, prepared)
    if ready is not None:
        return ready
    artifact_id = prepared.artifact.artifact_id
    by_id = f"artifact:{artifact_id}"
    fp = ws.cache.alias(by_id)
    staged = ws.cache.handout(fp) if fp is not None else None
    if staged is None:  # not here (or damaged): staged from its manifest
        staged = ws.cache.stage(
            ws.shared.source(prepared.artifact),
            prepared.artifact.manifest,
            workers=ws.settings.workers,
            part_size=ws.settings.part_size,
            **kwargs,
        )
        ws.cache.alias(by_id, staged.fingerprint)
    ready_seconds = staged.seconds if not staged.hit else time.monotonic() - started
    return Ready(prepared, staged, _record_stage(ws, artifact_id, staged, ready_seconds))


@contextmanager
def _leased(ws: Workspace, ready: Ready) -> Iterator[StagedDataset]:
    """The ready data kept from eviction for the block: by fingerprint while this node still
    holds it (its manifest is not read), else staged again from the artifact."""
    fp = ready.staged.fingerprint
    if ws.cache.lookup(fp) is not None:
        with ws.cache.lease(fp) as path:
            yield dataclasses.replace(ready.staged, path=path, hit=True)
        return
    artifact = ready.prepared.artifact
    with ws.cache.use(
        ws.shared.source(artifact),
        artifact.manifest,
        workers=ws.settings.workers,
        part_size=ws.settings.part_size,
    ) as staged:
        yield staged


def _run_error(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    """A failed run's error for the record: mlstage errors as they are, others with their type;
    the values of the model's ``secrets`` masked wherever the error repeats them."""
    text = str(exc) if isinstance(exc, MlstageError) else f"{type(exc).__name__}: {exc}"
    for value in sorted(secrets, key=len, reverse=True):
        if len(value) >= 4:  # shorter ones would mask ordinary words; none is a real secret
            text = text.replace(value, MASK)
    return scrub_text(text)


def _secret_values(model: ModelSpec, params: dict[str, Any]) -> list[str]:
    return [str(params[p]) for p in model.secrets if p in params]


def _start_run(
    ws: Workspace, model: ModelSpec, sweep_id: str | None, flow_run_id: str | None
) -> BenchmarkRun:
    """Record that ``model`` starts now (status running), whatever launches it."""
    return ws.state.start_run(
        model=model.name,
        dataset=model.dataset,
        entrypoint=model.entrypoint,
        params=model.recorded_params(),
        sweep_id=sweep_id,
        flow_run_id=flow_run_id,
    )


def run(
    ws: Workspace,
    model: ModelSpec,
    ready: Ready,
    *,
    sweep_id: str | None = None,
    flow_run_id: str | None = None,
    resolve_secret: SecretResolver | None = None,
) -> RunOutcome:
    """Run the model's entrypoint on its staged data and record it.

    The data is leased for the whole run; if eviction took it after ``stage`` (a small
    cache limit and other stagings in between), it is staged again first. The model's
    ``secrets`` are loaded by ``resolve_secret`` right before its entrypoint is called; the
    record names their blocks, and an error that repeats a value has it masked.
    """
    row = _start_run(ws, model, sweep_id, flow_run_id)
    params: dict[str, Any] = {}
    try:
        artifact = ready.prepared.artifact
        with _leased(ws, ready) as staged:
            consumed = ready.stage_record_id
            if not staged.hit:  # evicted since it was staged: this run's own staging counts
                consumed = _record_stage(ws, artifact.artifact_id, staged, staged.seconds)
            ws.state.record_consumption(row.id, ready.artifact_id, consumed)
            params = model.runtime_params(resolve_secret)
            metrics = run_entrypoint(model.entrypoint, staged.path, params)
    except Exception as exc:  # noqa: BLE001 - any failure is recorded, never left 'running'
        return record(ws, row, model, ready, error=_run_error(exc, _secret_values(model, params)))
    return record(ws, row, model, ready, metrics=metrics)


def run_streaming(
    ws: Workspace,
    model: ModelSpec,
    prepared: Prepared,
    *,
    sweep_id: str | None = None,
    flow_run_id: str | None = None,
    priority: list[str] | None = None,
    resolve_secret: SecretResolver | None = None,
) -> RunOutcome:
    """stage + run overlapped (``start: first-shard``): the model starts on the first object.

    Staging goes on in the background and ends as a normal cache entry, recorded like
    ``stage`` does; the run's metrics gain ``time_to_first_object_s``, ``time_to_ready_s``
    and ``data_stall_seconds`` (time the reader waited for data). An entrypoint that cannot
    read while staging starts when the data is complete (see runner.run_entrypoint_streaming).
    Secrets are loaded as in ``run``.
    """
    from mlstage.runner import run_entrypoint_streaming
    from mlstage.stream import open_stream

    row = _start_run(ws, model, sweep_id, flow_run_id)
    artifact = prepared.artifact
    ready: Ready | None = None
    staged: StagedDataset | None = None
    metrics: Metrics = {}
    error: str | None = None
    params: dict[str, Any] = {}
    try:
        stream = open_stream(
            ws.cache,
            ws.shared.source(artifact),
            artifact.manifest,
            workers=ws.settings.workers,
            part_size=ws.settings.part_size,
            priority=priority,
        )
        try:
            stream.wait_first()
            params = model.runtime_params(resolve_secret)
            metrics = run_entrypoint_streaming(model.entrypoint, stream, params)
            staged = stream.wait()
        except Exception as exc:  # noqa: BLE001 - any failure is recorded, never left 'running'
            error = _run_error(exc, _secret_values(model, params))
        finally:
            stream.close()  # collects the stall DataLoader workers reported
        stats = stream.stats()
    except Exception as exc:  # noqa: BLE001 - opening or closing the stream failed: record it
        error = error or _run_error(exc, _secret_values(model, params))
        return record(ws, row, model, ready, metrics=metrics, error=error)
    if staged is not None:
        rec = ws.state.record_stage(
            artifact.artifact_id,
            hit=staged.hit,
            bytes_fetched=stats.bytes_fetched,
            objects_fetched=staged.objects_fetched,
            first_object_seconds=stats.time_to_first_object_s,
            ready_seconds=stats.time_to_ready_s or 0.0,
            stall_seconds=stats.stall_seconds,
        )
        assert rec.id is not None
        ready = Ready(prepared, staged, rec.id)
        ws.state.record_consumption(row.id, artifact.artifact_id, rec.id)
    return record(ws, row, model, ready, metrics={**metrics, **stats.as_metrics()}, error=error)


def record(
    ws: Workspace,
    run: BenchmarkRun,
    model: ModelSpec,
    ready: Ready | None,
    *,
    metrics: Metrics | None = None,
    error: str | None = None,
) -> RunOutcome:
    """Close a run's lineage row: completed with its metrics, or failed with its error.

    The row was opened as the run started (``_start_run``) and linked to the staging it
    consumed before the model read a byte, so a run that dies midway still says what it read.
    """
    status = "completed" if error is None else "failed"
    ws.state.finish_run(run.id, status=status, metrics=metrics, error=error)
    return RunOutcome(run.id, model.name, model.dataset, status, metrics or {}, error, ready)
