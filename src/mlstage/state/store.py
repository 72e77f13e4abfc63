"""Recording what happened and answering lineage questions, over one engine.

Every value that could carry a credential (source URIs, run parameters, sweep specs, error
messages) passes through ``mlstage.redact`` before it is stored.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pydantic import SecretStr
from sqlalchemy import ColumnElement, func
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from mlstage.errors import ConfigError, StateError
from mlstage.redact import scrub_params, scrub_params_json, scrub_text, scrub_uri
from mlstage.state.db import first_line, make_engine, write_engine
from mlstage.state.models import (
    Artifact,
    BenchmarkRun,
    Consumption,
    Dataset,
    DatasetVersion,
    Recipe,
    StageRecord,
    Sweep,
    utcnow,
)
from mlstage.state.url import mask_url, without_secrets

MIN_ID_PREFIX = 6


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts else None


@dataclass(frozen=True)
class LineageRow:
    """One run and exactly what it consumed (one row per consumed artifact)."""

    run_id: str
    flow_run_id: str | None
    sweep_id: str | None
    model: str
    dataset: str
    status: str
    version: str | None
    source_uri: str | None
    artifact_id: str | None
    cache_hit: bool | None
    bytes_fetched: int | None
    metrics: dict[str, Any]
    started_at: str
    params: dict[str, Any] = field(default_factory=dict)
    finished_at: str | None = None
    error: str | None = None
    node: str | None = None
    bytes_from_shared: int | None = None
    bytes_from_source: int | None = None
    first_object_seconds: float | None = None
    ready_seconds: float | None = None
    stall_seconds: float | None = None
    latest_version: str | None = None
    entrypoint: str | None = None
    # where the consumed bytes came from (see ``origins``): the artifact's size, split by
    # origin, and in words
    bytes_total: int | None = None
    bytes_from_cache: int | None = None
    bytes_from_recipe: int | None = None
    data_from: str | None = None
    staged_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what ``--json`` prints)."""
        return asdict(self)


@dataclass(frozen=True)
class VersionRow:
    """One version in a dataset's history, and how many runs consumed it."""

    version: str
    source_uri: str
    files: int
    bytes: int
    first_seen: str
    last_seen: str | None
    current: bool
    runs: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (what ``--json`` prints)."""
        return asdict(self)


CACHE, SHARED, SOURCE, RECIPE = "cache", "shared tier", "source", "recipe output on this node"


@dataclass(frozen=True)
class Origins:
    """Where a staging's bytes came from: its artifact's bytes, each counted once."""

    cache: int
    shared: int
    source: int
    recipe: int

    @property
    def words(self) -> str:
        """The origins in words, largest first: ``shared tier``, ``cache + shared tier``..."""
        parts = [
            (self.recipe, RECIPE),
            (self.shared, SHARED),
            (self.source, SOURCE),
            (self.cache, CACHE),
        ]
        named = [name for n, name in sorted(parts, key=lambda p: -p[0]) if n > 0]
        return " + ".join(named) or CACHE


def origins(*, hit: bool, total: int | None, fetched: int, shared: int, source: int) -> Origins:
    """Split a staging of an artifact of ``total`` bytes by origin.

    A hit read it all from this node's cache. A miss moved ``fetched`` bytes onto the node:
    ``shared`` from the shared tier, ``source`` from the source, and the rest from the recipe's
    output on this node (preprocessed here and filed into the cache, nothing read back); what
    it did not move (objects the cache already held) came from the cache.
    """
    if hit:
        return Origins(total or 0, 0, 0, 0)
    recipe = max(0, fetched - shared - source)
    cache = max(0, (total or 0) - fetched)
    return Origins(cache, shared, source, recipe)


def _id_match(column: Any, value: str) -> ColumnElement[bool]:
    """Equal, or a prefix match for long enough values (tables show ids shortened)."""
    return column.startswith(value) if len(value) >= MIN_ID_PREFIX else column == value


def _current_versions() -> Any:
    """Subquery: each dataset's current version (the one a resolve saw last)."""
    seen = func.coalesce(DatasetVersion.last_seen, DatasetVersion.first_seen)
    ranked = select(
        col(DatasetVersion.id).label("id"),
        col(DatasetVersion.dataset_id).label("dataset_id"),
        col(DatasetVersion.fingerprint).label("fingerprint"),
        func.row_number()
        .over(
            partition_by=DatasetVersion.dataset_id,
            order_by=(seen.desc(), col(DatasetVersion.id).desc()),
        )
        .label("rn"),
    ).subquery()
    return select(ranked.c.id, ranked.c.dataset_id, ranked.c.fingerprint).where(ranked.c.rn == 1)


def _latest_runs() -> Any:
    """Subquery: the id of each benchmark's latest run, a benchmark being a model on a dataset
    (the runs that consumed a version of it, newest ``started_at`` first)."""
    ranked = (
        select(
            col(BenchmarkRun.id).label("run_id"),
            func.row_number()
            .over(
                partition_by=(BenchmarkRun.model, DatasetVersion.dataset_id),
                order_by=(col(BenchmarkRun.started_at).desc(), col(BenchmarkRun.id).desc()),
            )
            .label("rn"),
        )
        .join(Consumption, col(Consumption.run_id) == BenchmarkRun.id)
        .join(DatasetVersion, col(DatasetVersion.id) == Consumption.version_id)
        .subquery()
    )
    return select(ranked.c.run_id).where(ranked.c.rn == 1)


class StateStore:
    """The state DB. ``StateStore.open(url)`` checks this mlstage may use its schema."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = write_engine(engine)

    @classmethod
    def open(cls, url: str | SecretStr) -> StateStore:
        """Open the state DB at ``url``; StateError (one line) if this mlstage cannot use it.

        An empty DB gets the schema and a SQLite file is upgraded; a server DB behind this
        mlstage is refused until ``mlstage db upgrade`` (see ``mlstage.state.schema``).
        """
        return cls(make_engine(url))

    def close(self) -> None:
        """Release the engine's connections."""
        self.engine.dispose()

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session; DB failures become StateError naming the (masked) URL."""
        try:
            with Session(self._writer if write else self.engine, expire_on_commit=False) as s:
                yield s
        except DBAPIError as exc:
            raise StateError(
                f"state DB {mask_url(self.engine.url)} failed: "
                f"{without_secrets(first_line(exc), self.engine.url)}",
                hint="check that the server is up and MLSTAGE_STATE_URL is right",
            ) from exc

    # -- recording ----------------------------------------------------------------------
    def _dataset(self, s: Session, name: str) -> Dataset:
        ds = s.exec(select(Dataset).where(Dataset.name == name)).first()
        if ds is None:
            ds = Dataset(name=name)
            s.add(ds)
            try:
                s.commit()
            except DBIntegrityError:  # created concurrently
                s.rollback()
                ds = s.exec(select(Dataset).where(Dataset.name == name)).one()
        return ds

    def record_version(
        self, dataset: str, fingerprint: str, source_uri: str, files: int, nbytes: int
    ) -> tuple[DatasetVersion, bool]:
        """The version row for ``fingerprint`` (now the current one); True when it was new."""
        with self.session(write=True) as s:
            ds = self._dataset(s, dataset)
            q = select(DatasetVersion).where(
                DatasetVersion.dataset_id == ds.id, DatasetVersion.fingerprint == fingerprint
            )
            v = s.exec(q).first()
            if v is not None:
                v.last_seen = utcnow()
                s.add(v)
                s.commit()
                return v, False
            v = DatasetVersion(
                dataset_id=ds.id,
                fingerprint=fingerprint,
                source_uri=scrub_uri(source_uri),
                files=files,
                bytes=nbytes,
            )
            s.add(v)
            try:
                s.commit()
            except DBIntegrityError:
                s.rollback()
                return s.exec(q).one(), False
            return v, True

    def record_artifact(
        self,
        artifact_id: str,
        version_id: int,
        recipe: tuple[str, str, str],
        location: str,
        manifest_digest: str,
        files: int,
        nbytes: int,
    ) -> Artifact:
        """The artifact row (made once per content address) and its recipe row."""
        name, version, raw_params_json = recipe
        params_json = scrub_params_json(raw_params_json)
        with self.session() as s:  # the usual case, without taking the write lock
            a = s.get(Artifact, artifact_id)
            if a is not None:
                return a
        with self.session(write=True) as s:
            a = s.get(Artifact, artifact_id)
            if a is not None:
                return a
            rq = select(Recipe).where(
                Recipe.name == name, Recipe.version == version, Recipe.params_json == params_json
            )
            r = s.exec(rq).first()
            if r is None:
                r = Recipe(name=name, version=version, params_json=params_json)
                s.add(r)
                try:
                    s.commit()
                except DBIntegrityError:
                    s.rollback()
                    r = s.exec(rq).one()
            a = Artifact(
                id=artifact_id,
                version_id=version_id,
                recipe_id=r.id,
                location=scrub_uri(location),
                manifest_digest=manifest_digest,
                files=files,
                bytes=nbytes,
            )
            s.add(a)
            try:
                s.commit()
            except DBIntegrityError:
                s.rollback()
                a = s.get(Artifact, artifact_id)
            assert a is not None
            return a

    def record_stage(
        self,
        artifact_id: str,
        *,
        hit: bool,
        bytes_fetched: int,
        objects_fetched: int,
        first_object_seconds: float | None,
        ready_seconds: float,
        node: str | None = None,
        bytes_from_source: int = 0,
        stall_seconds: float | None = None,
        bytes_from_shared: int | None = None,
    ) -> StageRecord:
        """One staging onto a node. Bytes not read from the source came from the shared tier,
        unless ``bytes_from_shared`` says otherwise (0: made on this node)."""
        with self.session(write=True) as s:
            rec = StageRecord(
                node=node or socket.gethostname(),
                artifact_id=artifact_id,
                cache_hit=hit,
                bytes_fetched=bytes_fetched,
                bytes_from_shared=max(0, bytes_fetched - bytes_from_source)
                if bytes_from_shared is None
                else bytes_from_shared,
                bytes_from_source=bytes_from_source,
                objects_fetched=objects_fetched,
                first_object_seconds=first_object_seconds,
                ready_seconds=ready_seconds,
                stall_seconds=stall_seconds,
            )
            s.add(rec)
            s.commit()
            return rec

    def add_stall(self, stage_record_id: int, seconds: float) -> None:
        """Add time a streaming reader spent waiting for objects of this staging."""
        with self.session(write=True) as s:
            rec = s.get(StageRecord, stage_record_id)
            if rec is None:
                raise LookupError(f"unknown stage record {stage_record_id}")
            rec.stall_seconds = (rec.stall_seconds or 0.0) + seconds
            s.add(rec)
            s.commit()

    def start_sweep(self, name: str, spec: dict[str, Any], flow_run_id: str | None = None) -> Sweep:
        """A new sweep row (its spec stored with secrets masked)."""
        with self.session(write=True) as s:
            sw = Sweep(name=name, spec=scrub_params(spec), flow_run_id=flow_run_id)
            s.add(sw)
            s.commit()
            return sw

    def finish_sweep(self, sweep_id: str, status: str) -> None:
        """Mark a sweep finished with ``status``."""
        with self.session(write=True) as s:
            sw = s.get(Sweep, sweep_id)
            if sw is not None:
                sw.status, sw.finished_at = status, utcnow()
                s.add(sw)
                s.commit()

    def start_run(
        self,
        *,
        model: str,
        dataset: str,
        entrypoint: str,
        params: dict[str, Any],
        sweep_id: str | None = None,
        flow_run_id: str | None = None,
    ) -> BenchmarkRun:
        """A new benchmark run row (parameters stored with secrets masked)."""
        with self.session(write=True) as s:
            run = BenchmarkRun(
                model=model,
                dataset=dataset,
                entrypoint=scrub_text(entrypoint),
                params=scrub_params(params),
                sweep_id=sweep_id,
                flow_run_id=flow_run_id,
            )
            s.add(run)
            s.commit()
            return run

    def record_consumption(
        self, run_id: str, artifact_id: str, stage_record_id: int | None
    ) -> Consumption:
        """Run ``run_id`` read artifact ``artifact_id`` (and so its source version)."""
        with self.session(write=True) as s:
            art = s.get(Artifact, artifact_id)
            if art is None:
                raise LookupError(f"unknown artifact {artifact_id}")
            c = Consumption(
                run_id=run_id,
                artifact_id=artifact_id,
                version_id=art.version_id,
                stage_record_id=stage_record_id,
            )
            s.add(c)
            s.commit()
            return c

    def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Record a run's outcome: status, metrics, error (URL credentials removed)."""
        with self.session(write=True) as s:
            run = s.get(BenchmarkRun, run_id)
            if run is None:
                raise LookupError(f"unknown run {run_id}")
            run.status = status
            run.metrics = scrub_params(metrics or {})
            run.error = scrub_text(error) if error else None
            run.finished_at = utcnow()
            s.add(run)
            s.commit()

    # -- lineage queries ----------------------------------------------------------------
    def _lineage(
        self,
        s: Session,
        *where: ColumnElement[bool],
        newest_first: bool = False,
        limit: int | None = None,
        stale_only: bool = False,
    ) -> list[LineageRow]:
        cur = _current_versions().subquery()
        q = (
            select(
                BenchmarkRun,
                Consumption,
                DatasetVersion,
                StageRecord,
                cur.c.fingerprint,
                col(Artifact.bytes),
            )
            .outerjoin(Consumption, col(Consumption.run_id) == BenchmarkRun.id)
            .outerjoin(DatasetVersion, col(DatasetVersion.id) == Consumption.version_id)
            .outerjoin(StageRecord, col(StageRecord.id) == Consumption.stage_record_id)
            .outerjoin(Artifact, col(Artifact.id) == Consumption.artifact_id)
            .outerjoin(cur, cur.c.dataset_id == DatasetVersion.dataset_id)
        )
        for w in where:
            q = q.where(w)
        if stale_only:
            q = q.where(cur.c.id != DatasetVersion.id)
        started = col(BenchmarkRun.started_at)
        q = q.order_by(started.desc() if newest_first else started, col(BenchmarkRun.id))
        if limit:
            q = q.limit(limit)
        out = []
        for run, c, v, st, latest, total in s.exec(q):
            split = (
                origins(
                    hit=st.cache_hit,
                    total=total,
                    fetched=st.bytes_fetched,
                    shared=st.bytes_from_shared,
                    source=st.bytes_from_source,
                )
                if st
                else None
            )
            out.append(
                LineageRow(
                    run_id=run.id,
                    flow_run_id=run.flow_run_id,
                    sweep_id=run.sweep_id,
                    model=run.model,
                    dataset=run.dataset,
                    status=run.status,
                    version=v.fingerprint if v else None,
                    source_uri=v.source_uri if v else None,
                    artifact_id=c.artifact_id if c else None,
                    cache_hit=st.cache_hit if st else None,
                    bytes_fetched=st.bytes_fetched if st else None,
                    metrics=run.metrics or {},
                    started_at=run.started_at.isoformat(),
                    params=run.params or {},
                    finished_at=_iso(run.finished_at),
                    error=run.error,
                    node=st.node if st else None,
                    bytes_from_shared=st.bytes_from_shared if st else None,
                    bytes_from_source=st.bytes_from_source if st else None,
                    first_object_seconds=st.first_object_seconds if st else None,
                    ready_seconds=st.ready_seconds if st else None,
                    stall_seconds=st.stall_seconds if st else None,
                    latest_version=latest,
                    entrypoint=run.entrypoint,
                    bytes_total=total,
                    bytes_from_cache=split.cache if split else None,
                    bytes_from_recipe=split.recipe if split else None,
                    data_from=split.words if split else None,
                    staged_at=_iso(st.created_at) if st else None,
                )
            )
        return out

    def runs(self, *, sweep_id: str | None = None, limit: int = 1000) -> list[LineageRow]:
        """Every run (newest first) with what it consumed."""
        where = [col(BenchmarkRun.sweep_id) == sweep_id] if sweep_id else []
        with self.session() as s:
            return self._lineage(s, *where, newest_first=True, limit=limit)

    def run(self, run_id: str) -> LineageRow | None:
        """One run by mlstage run id, Prefect flow run id, or a unique prefix of either."""
        with self.session() as s:
            for column in (BenchmarkRun.id, BenchmarkRun.flow_run_id):
                rows = self._lineage(s, col(column) == run_id)
                runs = {r.run_id for r in rows}
                if len(runs) > 1:  # a sweep's inline models all run in the sweep's flow run
                    raise ConfigError(
                        f"flow run {run_id} recorded {len(runs)} runs",
                        hint="give one of their run ids (mlstage lineage runs lists them)",
                    )
                if rows:
                    return rows[0]
            if len(run_id) < MIN_ID_PREFIX:
                return None
            ids = set(
                s.exec(select(BenchmarkRun.id).where(col(BenchmarkRun.id).startswith(run_id)))
            )
            if len(ids) > 1:
                raise ConfigError(
                    f"run id prefix {run_id!r} matches {len(ids)} runs",
                    hint="give more characters of the run id",
                )
            rows = self._lineage(s, col(BenchmarkRun.id) == ids.pop()) if ids else []
            return rows[0] if rows else None

    def runs_by_id(self, run_ids: Sequence[str]) -> dict[str, LineageRow]:
        """Runs by exact mlstage run id, one query for all (the first artifact of each)."""
        if not run_ids:
            return {}
        with self.session() as s:
            rows = self._lineage(s, col(BenchmarkRun.id).in_(list(run_ids)))
        out: dict[str, LineageRow] = {}
        for row in rows:
            out.setdefault(row.run_id, row)
        return out

    def consumed(self, run_id: str) -> list[LineageRow]:
        """Everything run ``run_id`` (exact mlstage run id) consumed, one row per artifact."""
        with self.session() as s:
            return self._lineage(s, col(BenchmarkRun.id) == run_id)

    def runs_consuming(
        self, *, version: str | None = None, artifact_id: str | None = None
    ) -> list[LineageRow]:
        """Runs that consumed a dataset version (fingerprint) or an artifact (or a prefix)."""
        if not version and not artifact_id:
            raise ConfigError("give a dataset version or an artifact id")
        where = [
            _id_match(col(column), value)
            for value, column in (
                (version, DatasetVersion.fingerprint),
                (artifact_id, Consumption.artifact_id),
            )
            if value
        ]
        with self.session() as s:
            return self._lineage(s, *where)

    def stale_runs(self, dataset: str | None = None, *, history: bool = False) -> list[LineageRow]:
        """The stale benchmarks: each one whose latest run consumed a superseded version.

        A benchmark is a model on a dataset; its latest run is the newest one that consumed a
        version of that dataset. A version is superseded when it is not the dataset's current
        one, the version a resolve saw last (so a source that went back to an older version
        makes the runs on the newer one stale). A benchmark re-run on the current version is
        not stale, however many older runs it has. ``history``: every run that consumed a
        superseded version instead, re-run or not.
        """
        where: list[ColumnElement[bool]] = []
        if dataset:
            ds_id = select(Dataset.id).where(Dataset.name == dataset).scalar_subquery()
            where.append(col(DatasetVersion.dataset_id) == ds_id)
        if not history:
            where.append(col(BenchmarkRun.id).in_(_latest_runs()))
        with self.session() as s:
            return self._lineage(s, *where, stale_only=True)

    def versions(self, dataset: str) -> list[DatasetVersion]:
        """A dataset's version rows, oldest first."""
        with self.session() as s:
            q = (
                select(DatasetVersion)
                .join(Dataset, col(Dataset.id) == DatasetVersion.dataset_id)
                .where(Dataset.name == dataset)
                .order_by(col(DatasetVersion.first_seen), col(DatasetVersion.id))
            )
            return list(s.exec(q))

    def history(self, dataset: str) -> list[VersionRow]:
        """A dataset's version history, oldest first, the current one marked, runs counted."""
        cur = _current_versions().subquery()
        consumed = aliased(Consumption)
        runs = (
            select(func.count(func.distinct(consumed.run_id)))
            .where(consumed.version_id == DatasetVersion.id)
            .scalar_subquery()
        )
        q = (
            select(DatasetVersion, cur.c.id, runs)
            .join(Dataset, col(Dataset.id) == DatasetVersion.dataset_id)
            .outerjoin(cur, cur.c.dataset_id == DatasetVersion.dataset_id)
            .where(Dataset.name == dataset)
            .order_by(col(DatasetVersion.first_seen), col(DatasetVersion.id))
        )
        with self.session() as s:
            return [
                VersionRow(
                    version=v.fingerprint,
                    source_uri=v.source_uri,
                    files=v.files,
                    bytes=v.bytes,
                    first_seen=v.first_seen.isoformat(),
                    last_seen=_iso(v.last_seen),
                    current=v.id == current_id,
                    runs=int(n or 0),
                )
                for v, current_id, n in s.exec(q)
            ]
