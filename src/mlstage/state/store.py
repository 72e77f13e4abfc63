"""Recording what happened and answering lineage questions, over one engine."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlmodel import Session, col, func, select

from mlstage.state.db import make_engine
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


@dataclass(frozen=True)
class LineageRow:
    """One run and exactly what it consumed."""

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class StateStore:
    """The state DB. ``StateStore.open(url)`` migrates it to the current schema."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> StateStore:
        return cls(make_engine(url))

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

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
        """The version row for ``fingerprint``; True when it was new."""
        with self.session() as s:
            ds = self._dataset(s, dataset)
            q = select(DatasetVersion).where(
                DatasetVersion.dataset_id == ds.id, DatasetVersion.fingerprint == fingerprint
            )
            v = s.exec(q).first()
            if v is not None:
                return v, False
            v = DatasetVersion(
                dataset_id=ds.id,
                fingerprint=fingerprint,
                source_uri=source_uri,
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
        name, version, params_json = recipe
        with self.session() as s:
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
                location=location,
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
    ) -> StageRecord:
        with self.session() as s:
            rec = StageRecord(
                node=node or socket.gethostname(),
                artifact_id=artifact_id,
                cache_hit=hit,
                bytes_fetched=bytes_fetched,
                objects_fetched=objects_fetched,
                first_object_seconds=first_object_seconds,
                ready_seconds=ready_seconds,
            )
            s.add(rec)
            s.commit()
            return rec

    def start_sweep(self, name: str, spec: dict[str, Any], flow_run_id: str | None = None) -> Sweep:
        with self.session() as s:
            sw = Sweep(name=name, spec=spec, flow_run_id=flow_run_id)
            s.add(sw)
            s.commit()
            return sw

    def finish_sweep(self, sweep_id: str, status: str) -> None:
        with self.session() as s:
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
        with self.session() as s:
            run = BenchmarkRun(
                model=model,
                dataset=dataset,
                entrypoint=entrypoint,
                params=params,
                sweep_id=sweep_id,
                flow_run_id=flow_run_id,
            )
            s.add(run)
            s.commit()
            return run

    def record_consumption(
        self, run_id: str, artifact_id: str, stage_record_id: int | None
    ) -> Consumption:
        with self.session() as s:
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
        with self.session() as s:
            run = s.get(BenchmarkRun, run_id)
            if run is None:
                raise LookupError(f"unknown run {run_id}")
            run.status, run.metrics, run.error, run.finished_at = (
                status,
                metrics or {},
                error,
                utcnow(),
            )
            s.add(run)
            s.commit()

    # -- lineage queries ----------------------------------------------------------------
    def _lineage(self, s: Session, runs: list[BenchmarkRun]) -> list[LineageRow]:
        out = []
        for run in runs:
            c = s.exec(select(Consumption).where(Consumption.run_id == run.id)).first()
            v = s.get(DatasetVersion, c.version_id) if c else None
            st = s.get(StageRecord, c.stage_record_id) if c and c.stage_record_id else None
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
                )
            )
        return out

    def runs(self, *, sweep_id: str | None = None, limit: int = 1000) -> list[LineageRow]:
        """Every run (newest first) with what it consumed."""
        with self.session() as s:
            q = select(BenchmarkRun).order_by(col(BenchmarkRun.started_at).desc()).limit(limit)
            if sweep_id:
                q = q.where(BenchmarkRun.sweep_id == sweep_id)
            return self._lineage(s, list(s.exec(q)))

    def run(self, run_id: str) -> LineageRow | None:
        with self.session() as s:
            run = s.get(BenchmarkRun, run_id)
            if run is None:
                run = s.exec(select(BenchmarkRun).where(BenchmarkRun.flow_run_id == run_id)).first()
            return self._lineage(s, [run])[0] if run else None

    def runs_consuming(
        self, *, version: str | None = None, artifact_id: str | None = None
    ) -> list[LineageRow]:
        """Runs that consumed a dataset version (fingerprint) or an artifact."""
        with self.session() as s:
            q = select(BenchmarkRun).join(Consumption, Consumption.run_id == BenchmarkRun.id)
            if artifact_id:
                q = q.where(Consumption.artifact_id == artifact_id)
            if version:
                q = q.join(DatasetVersion, DatasetVersion.id == Consumption.version_id).where(
                    DatasetVersion.fingerprint == version
                )
            return self._lineage(s, list(s.exec(q.order_by(col(BenchmarkRun.started_at)))))

    def stale_runs(self, dataset: str | None = None) -> list[LineageRow]:
        """Runs whose dataset has a version newer than the one they consumed."""
        with self.session() as s:
            latest = (
                select(DatasetVersion.dataset_id, func.max(DatasetVersion.id).label("latest"))
                .group_by(DatasetVersion.dataset_id)
                .subquery()
            )
            q = (
                select(BenchmarkRun)
                .join(Consumption, Consumption.run_id == BenchmarkRun.id)
                .join(DatasetVersion, DatasetVersion.id == Consumption.version_id)
                .join(latest, latest.c.dataset_id == DatasetVersion.dataset_id)
                .where(DatasetVersion.id < latest.c.latest)
            )
            if dataset:
                q = q.join(Dataset, Dataset.id == DatasetVersion.dataset_id).where(
                    Dataset.name == dataset
                )
            return self._lineage(s, list(s.exec(q.order_by(col(BenchmarkRun.started_at)))))

    def versions(self, dataset: str) -> list[DatasetVersion]:
        """A dataset's version history, oldest first."""
        with self.session() as s:
            q = (
                select(DatasetVersion)
                .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
                .where(Dataset.name == dataset)
                .order_by(col(DatasetVersion.id))
            )
            return list(s.exec(q))
