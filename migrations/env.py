"""Alembic environment: uses a connection handed in by tokenfleet.db.migrate, or the URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from tokenfleet.db import make_engine
from tokenfleet.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        from tokenfleet.settings import load_settings

        url = load_settings().database_url
    engine = make_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
