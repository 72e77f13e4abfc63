"""SQLModel tables of the state DB: what exists, and what every benchmark run consumed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Dataset(SQLModel, table=True):
    __tablename__ = "datasets"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    created_at: datetime = Field(default_factory=utcnow)


class DatasetVersion(SQLModel, table=True):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "fingerprint"),)
    id: int | None = Field(default=None, primary_key=True)
    dataset_id: int = Field(foreign_key="datasets.id", index=True)
    fingerprint: str = Field(index=True)
    source_uri: str
    files: int
    bytes: int
    first_seen: datetime = Field(default_factory=utcnow)


class Recipe(SQLModel, table=True):
    __tablename__ = "recipes"
    __table_args__ = (UniqueConstraint("name", "version", "params_json"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str
    version: str
    params_json: str


class Artifact(SQLModel, table=True):
    __tablename__ = "artifacts"
    id: str = Field(primary_key=True, description="content address: hash(version, recipe, params)")
    version_id: int = Field(foreign_key="dataset_versions.id", index=True)
    recipe_id: int = Field(foreign_key="recipes.id")
    location: str
    manifest_digest: str
    files: int
    bytes: int
    created_at: datetime = Field(default_factory=utcnow)


class StageRecord(SQLModel, table=True):
    __tablename__ = "stage_records"
    id: int | None = Field(default=None, primary_key=True)
    node: str
    artifact_id: str = Field(foreign_key="artifacts.id", index=True)
    cache_hit: bool
    bytes_fetched: int
    objects_fetched: int
    first_object_seconds: float | None = None
    ready_seconds: float
    created_at: datetime = Field(default_factory=utcnow)


class Sweep(SQLModel, table=True):
    __tablename__ = "sweeps"
    id: str = Field(default_factory=new_id, primary_key=True)
    name: str
    flow_run_id: str | None = None
    spec: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    status: str = "running"
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class BenchmarkRun(SQLModel, table=True):
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
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class Consumption(SQLModel, table=True):
    __tablename__ = "consumptions"
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="benchmark_runs.id", index=True)
    artifact_id: str = Field(foreign_key="artifacts.id", index=True)
    version_id: int = Field(foreign_key="dataset_versions.id", index=True)
    stage_record_id: int | None = Field(default=None, foreign_key="stage_records.id")
