"""Watch coordination: watch_states (what each watched dataset last announced, what is settling)
and restage_claims (one row per re-stage of a dataset version), so watchers and re-stages on
several machines announce and re-stage each change once.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "watch_states",
        sa.Column("dataset", sa.String(), nullable=False),
        sa.Column("current", sa.String(), nullable=False),
        sa.Column("pending", sa.String(), nullable=True),
        sa.Column("pending_since", sa.Float(), nullable=True),
        sa.Column("observed_at", sa.Float(), nullable=True),
        sa.Column("changed_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("dataset"),
    )
    op.create_table(
        "restage_claims",
        sa.Column("dataset", sa.String(), nullable=False),
        sa.Column("version", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("claimed_at", sa.Float(), nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("detail", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("dataset", "version"),
    )


def downgrade() -> None:
    op.drop_table("restage_claims")
    op.drop_table("watch_states")
