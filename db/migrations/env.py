"""Alembic environment for the store.

`planner db upgrade` (db/migrate.py) passes an open connection in `config.attributes`; the
`alembic` command run from the repository root gets its URL from `-x db=URL`, else
PLANNER_DB_URL, else the default SQLite file. The version table has its own name so an Optuna
study can share the database.
"""

from __future__ import annotations

from alembic import context

from db.migrate import VERSION_TABLE
from db.models import Base

config = context.config


def _configure_and_run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    from db.location import resolve_url
    from db.session import make_engine

    url = resolve_url(context.get_x_argument(as_dictionary=True).get("db"))
    engine = make_engine(url, foreign_keys=False)
    try:
        with engine.connect() as connection:
            _configure_and_run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported: run against a database URL")
run_online()
