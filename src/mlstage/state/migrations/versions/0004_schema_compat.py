"""schema_compat: one row saying which schema revision the DB is at and the oldest revision
whose code may still use it, so a node one version behind can tell whether it may keep
working on a DB another node upgraded (expand/contract, see mlstage.state.schema).

Every revision from this one on declares ``compatible_from``: an additive ("expand")
revision keeps its predecessor's value, a breaking ("contract") one sets its own revision.
``mlstage.state.schema.migrate`` writes the row after each upgrade.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None
# Code before 0004 reads no schema_compat row and refuses every revision it does not know,
# so no older code can be declared compatible: this is where compatibility starts.
compatible_from = "0004"


def upgrade() -> None:
    op.create_table(
        "schema_compat",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.String(), nullable=False),
        sa.Column("compatible_from", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("schema_compat")
