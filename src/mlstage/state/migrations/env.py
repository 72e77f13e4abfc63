"""Alembic environment for the state DB: always run programmatically on a given connection.

``mlstage.state.db.migrate`` passes the connection in ``config.attributes["connection"]``;
no alembic.ini and no URL in a file are needed.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from mlstage.state import models  # noqa: F401  (registers the tables for autogenerate)

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "the state DB migrations run through mlstage.state.db.migrate(engine), "
        "which passes a connection"
    )

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
