"""Bytes per tier, stalls, last_seen, 64-bit byte counts, indexes for the lineage queries.

- stage_records: bytes_from_shared / bytes_from_source (backfilled: every staging recorded
  by 0001 read from the shared tier), stall_seconds for streaming readers.
- dataset_versions.last_seen (backfilled from first_seen): the current version of a dataset
  is the one a resolve saw last, so a source that goes back to an older version is right.
- Byte counts become BIGINT on PostgreSQL (INTEGER overflowed at 2 GiB); SQLite's INTEGER is
  already 64-bit, and rebuilding its tables would gain nothing.
- Indexes for "latest version per dataset", "runs by start time", "stage record of a
  consumption".

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BYTE_COLUMNS = [
    ("dataset_versions", "bytes"),
    ("artifacts", "bytes"),
    ("stage_records", "bytes_fetched"),
]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        for table, column in BYTE_COLUMNS:
            op.alter_column(
                table, column, type_=sa.BigInteger(), existing_type=sa.Integer(),
                existing_nullable=False,
            )
    big = sa.BigInteger() if postgres else sa.Integer()
    op.add_column(
        "stage_records",
        sa.Column("bytes_from_shared", big, nullable=False, server_default="0"),
    )
    op.add_column(
        "stage_records",
        sa.Column("bytes_from_source", big, nullable=False, server_default="0"),
    )
    op.add_column("stage_records", sa.Column("stall_seconds", sa.Float(), nullable=True))
    op.execute("UPDATE stage_records SET bytes_from_shared = bytes_fetched")

    op.add_column(
        "dataset_versions", sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True)
    )
    op.execute("UPDATE dataset_versions SET last_seen = first_seen")

    op.create_index(
        "ix_dataset_versions_dataset_id_last_seen", "dataset_versions", ["dataset_id", "last_seen"]
    )
    op.create_index("ix_benchmark_runs_started_at", "benchmark_runs", ["started_at"])
    op.create_index("ix_consumptions_stage_record_id", "consumptions", ["stage_record_id"])


def downgrade() -> None:
    op.drop_index("ix_consumptions_stage_record_id", "consumptions")
    op.drop_index("ix_benchmark_runs_started_at", "benchmark_runs")
    op.drop_index("ix_dataset_versions_dataset_id_last_seen", "dataset_versions")
    op.drop_column("dataset_versions", "last_seen")
    op.drop_column("stage_records", "stall_seconds")
    op.drop_column("stage_records", "bytes_from_source")
    op.drop_column("stage_records", "bytes_from_shared")
    if op.get_bind().dialect.name == "postgresql":
        for table, column in BYTE_COLUMNS:
            op.alter_column(
                table, column, type_=sa.Integer(), existing_type=sa.BigInteger(),
                existing_nullable=False,
            )
