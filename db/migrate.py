"""Schema revisions: what a database is at, what this tool needs, and upgrading to it.

The Alembic configuration is built here from the installed package (no alembic.ini needed);
the version table has its own name so an Optuna study can live in the same database.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from db.errors import SchemaOutOfDate, StoreError
from db.location import resolve_url, safe_url

VERSION_TABLE = "planner_alembic_version"
_OUR_TABLES = ("machines", "profiles", "profile_blocks", "plans", "runs")
_PG_LOCK_KEY = 0x504C414E  # "PLAN": one upgrader at a time on PostgreSQL


@dataclasses.dataclass(frozen=True)
class SchemaState:
    url: str
    current: str | None
    head: str

    @property
    def is_current(self) -> bool:
        return self.current == self.head


def alembic_config(connection=None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _scripts():
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    return _scripts().get_current_head()


def known_revisions() -> list[str]:
    """Every revision id, oldest first."""
    return [s.revision for s in reversed(list(_scripts().walk_revisions()))]


def current_revision(connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from alembic.util import CommandError

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    try:
        return context.get_current_revision()
    except CommandError:  # more than one row: someone edited the table
        heads = ", ".join(sorted(context.get_current_heads()))
        raise SchemaOutOfDate(
            f"the version table {VERSION_TABLE} holds several revisions ({heads}), which this tool "
            f"never writes: delete every row but the revision the schema is at"
        ) from None


def _has_our_tables(connection) -> bool:
    from sqlalchemy import inspect

    names = set(inspect(connection).get_table_names())
    return any(t in names for t in _OUR_TABLES)


def upgrade_command(url: str) -> str:
    return f"planner db upgrade --db {safe_url(url)}"


def check_schema(engine, url: str) -> None:
    """Create a new database at head; refuse one at another revision with the exact fix."""
    from db.session import reader

    with reader(engine).connect() as connection:  # a plain BEGIN: never waits for a writer
        current = current_revision(connection)
        has_tables = current is None and _has_our_tables(connection)
        connection.rollback()
    head = head_revision()
    if current == head:
        return
    if current is None and not has_tables:
        _upgrade_engine(engine)
        return
    raise _refusal(url, current, head)


def _refusal(url: str, current: str | None, head: str) -> StoreError:
    shown = safe_url(url)
    if current is None:
        return SchemaOutOfDate(
            f"database {shown} has planner tables but no revision in {VERSION_TABLE}: "
            f"it was not made by this tool; use another --db or move that database away"
        )
    if current not in known_revisions():
        return SchemaOutOfDate(
            f"database {shown} is at revision {current}, newer than this tool knows ({head}): "
            "upgrade offload-planner (git pull in its repository, then pip install -e .)"
        )
    return SchemaOutOfDate(
        f"database {shown} is at revision {current}, this tool needs {head}: "
        f"run `{upgrade_command(url)}`"
    )


def _upgrade_engine(engine, target: str = "head") -> None:
    """Run the migrations in one transaction that holds the write lock (rechecked inside).
    A `target` older than the database's revision migrates down to it."""
    from alembic import command
    from sqlalchemy import text

    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        current = current_revision(connection)
        if target == "head" and current == head_revision():
            return  # another process upgraded while we waited for the lock
        order = known_revisions()
        if current in order and target in order and order.index(target) < order.index(current):
            command.downgrade(alembic_config(connection), target)
            return
        command.upgrade(alembic_config(connection), target)


def schema_state(url: str | None = None) -> SchemaState:
    """Where the database at `url` stands; opens it, changes nothing."""
    from db.session import make_engine, run_transaction

    url = resolve_url(url)
    engine = make_engine(url)
    try:
        current = run_transaction(engine, url, lambda s: current_revision(s.connection()), write=False)
    finally:
        engine.dispose()
    return SchemaState(url=url, current=current, head=head_revision())


def upgrade(url: str | None = None, target: str = "head") -> tuple[SchemaState, SchemaState]:
    """Upgrade the database at `url` to `target`; the states before and after."""
    from sqlalchemy.exc import SQLAlchemyError

    from db.session import make_engine, translate

    url = resolve_url(url)
    before = schema_state(url)
    if before.current is not None and before.current not in known_revisions():
        raise _refusal(url, before.current, before.head)
    # Foreign keys off while SQLite tables are rebuilt in batch mode, so no row is dropped.
    engine = make_engine(url, foreign_keys=False)
    try:
        _upgrade_engine(engine, target)
    except SQLAlchemyError as e:
        raise translate(e, url) from e
    finally:
        engine.dispose()
    return before, schema_state(url)
