"""SQLModel tables of the state DB: what exists, and what every benchmark run consumed.

The schema changes only through the Alembic revisions in ``mlstage/state/migrations``; a
test checks that these tables and the head revision agree on both SQLite and PostgreSQL.
Datetimes are timezone-aware UTC on the way in and on the way out, on every backend.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Now, timezone-aware in UTC (what every datetime column stores)."""
    return datetime.now(UTC)


def new_id() -> str:
    """A fresh random id for sweeps and runs."""
    return uuid.uuid4().hex


class Dataset(SQLModel, table=True):
    """A named dataset, whatever version it is at."""

    __tablename__ = "datasets"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    created_at: datetime = Field(default_factory=utcnow)


class DatasetVersion(SQLModel, table=True):
    """One exact version of a dataset: its manifest fingerprint, where it came from, when."""

    __tablename__ = "dataset_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "fingerprint"),
        Index("ix_dataset_versions_dataset_id_last_seen", "dataset_id", "last_seen"),
    )
    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(foreign_key="datasets.id", index=True)
    fingerprint: str = Field(index=True)
    source_uri: str = Field(description="where it was resolved from, credentials removed")
    files: int
    bytes: int = Field(sa_type=BigInteger)
    first_seen: datetime = Field(default_factory=utcnow)
    last_seen: datetime | None = Field(
        default_factory=utcnow,
        description="the last time a resolve found the source at this version (current = latest)",
    )


class Recipe(SQLModel, table=True):
    """A preprocessing recipe at one code version with one set of parameters."""

    __tablename__ = "recipes"
    __table_args__ = (UniqueConstraint("name", "version", "params_json"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str
    version: str
    params_json: str


class Artifact(SQLModel, table=True):
    """A dataset version after a recipe, published on the shared tier."""

    __tablename__ = "artifacts"
    id: str = Field(primary_key=True, description="content address: hash(version, recipe, params)")
    version_id: int = Field(foreign_key="dataset_versions.id", index=True)
    recipe_id: int = Field(foreign_key="recipes.id")
    location: str
    manifest_digest: str
    files: int
    bytes: int = Field(sa_type=BigInteger)
    created_at: datetime = Field(default_factory=utcnow)


class StageRecord(SQLModel, table=True):
    """One staging of an artifact onto one node: hit or miss, bytes per tier, timings."""

    __tablename__ = "stage_records"
    id: int | None = Field(default=None, primary_key=True)
    node: str
    artifact_id: str = Field(foreign_key="artifacts.id", index=True)
    cache_hit: bool
    bytes_fetched: int = Field(sa_type=BigInteger, description="all bytes moved onto the node")
    bytes_from_shared: int = Field(default=0, sa_type=BigInteger)
    bytes_from_source: int = Field(default=0, sa_type=BigInteger)
    objects_fetched: int
    first_object_seconds: float | None = None
    ready_seconds: float
    stall_seconds: float | None = Field(
        default=None, description="time a streaming reader waited for objects not yet staged"
    )
    created_at: datetime = Field(default_factory=utcnow)


class Sweep(SQLModel, table=True):
    """One benchmark sweep (models x datasets), usually one Prefect flow run."""

    __tablename__ = "sweeps"
    id: str = Field(default_factory=new_id, primary_key=True)
    name: str
    flow_run_id: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    status: str = "running"
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class BenchmarkRun(SQLModel, table=True):
    """One model's benchmark run: parameters (secrets masked), status and metrics."""

    __tablename__ = "benchmark_runs"
    id: str = Field(default_factory=new_id, primary_key=True)
    sweep_id: str | None = Field(default=None, foreign_key="sweeps.id", index=True)
    flow_run_id: str | None = Field(default=None, index=True)
    model: str
    dataset: str
    entrypoint: str
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    status: str = "running"
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    error: str | None = None
    started_at: datetime = Field(default_factory=utcnow, index=True)
    finished_at: datetime | None = None


class Consumption(SQLModel, table=True):
    """Run <-> artifact <-> source version: what exactly a run read."""

    __tablename__ = "consumptions"
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="benchmark_runs.id", index=True)
    artifact_id: str = Field(foreign_key="artifacts.id", index=True)
    version_id: int = Field(foreign_key="dataset_versions.id", index=True)
    stage_record_id: int | None = Field(default=None, foreign_key="stage_records.id", index=True)


class WatchState(SQLModel, table=True):
    """Per watched dataset: the version last announced, and a newer one still settling."""

    __tablename__ = "watch_states"
    dataset: str = Field(primary_key=True)
    current: str = Field(description="the version (fingerprint) last announced or baselined")
    pending: str | None = Field(default=None, description="a newer fingerprint, not settled yet")
    pending_since: float | None = Field(default=None, description="epoch s it was first seen")
    observed_at: float | None = None
    changed_at: datetime | None = None


class RestageClaim(SQLModel, table=True):
    """One re-stage of a (dataset, version): inserting the row is the claim."""

    __tablename__ = "restage_claims"
    dataset: str = Field(primary_key=True)
    version: str = Field(primary_key=True)
    owner: str = Field(description="host:pid of the claimant")
    status: str = Field(default="running", description="running, done, failed, superseded")
    claimed_at: float = Field(description="epoch s; a running claim older than its lease is dead")
    finished_at: datetime | None = None
    detail: str | None = None


class SchemaCompat(SQLModel, table=True):
    """The schema revision of the DB and the oldest revision whose code may use it (one row).

    Written by every upgrade (``mlstage.state.schema.migrate``); read by code that does not
    know the DB's revision, to tell whether it may keep working (expand/contract).
    """

    __tablename__ = "schema_compat"
    id: int = Field(default=1, primary_key=True)
    revision: str
    compatible_from: str = Field(description="the oldest revision whose code may use this DB")
