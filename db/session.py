"""Engines and the one transaction helper every store call goes through.

SQLite follows SQLAlchemy's documented pysqlite recipe: the driver's own BEGIN handling is
switched off on connect and our `begin` hook emits the BEGIN, IMMEDIATE for writes, so a
writer takes the lock when its transaction starts rather than failing half-way. WAL mode lets
readers run beside one writer; a busy timeout plus a bounded retry lets several processes
write at once. Every database error leaves here as a `StoreError`, chained `from` the cause.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar

from db.errors import DatabaseLocked, StoreError
from db.location import parse_url, prepare_sqlite_file, safe_url, sqlite_path, unwritable

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

T = TypeVar("T")
_WRITE = "planner_write"
_LOCKED_WORDS = ("database is locked", "database table is locked", "database is busy")
_UNWRITABLE_WORDS = ("unable to open database file", "readonly database", "disk i/o error")
_TIMEOUT_WORDS = ("timeout expired", "timed out", "connection timeout")
# A server that accepts and never answers is given this long to finish connecting (libpq's
# connect_timeout, which psycopg applies to the whole start-up); a URL may set its own.
CONNECT_TIMEOUT_S = 10


def make_engine(url: str, *, busy_timeout_s: float = 1.0, foreign_keys: bool = True):
    """An engine for `url`; for SQLite with WAL, a busy timeout and BEGIN IMMEDIATE writes."""
    from sqlalchemy import create_engine, event

    parsed = parse_url(url)
    if parsed.drivername == "postgresql":  # psycopg 3 is the driver we ship, not psycopg2
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() != "sqlite":
        timeout = {} if parsed.get_backend_name() != "postgresql" or "connect_timeout" in parsed.query \
            else {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
        return _create(create_engine, parsed, url, pool_pre_ping=True, **timeout)

    prepare_sqlite_file(url)
    engine = _create(create_engine, parsed, url, connect_args={"timeout": busy_timeout_s})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see `_on_begin`)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
            if sqlite_path(url) is not None:
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")  # WAL: a killed process loses no commit
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        write = conn.get_execution_options().get(_WRITE, True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


# Extras of this package that carry a dialect's driver.
_EXTRAS = {"postgresql": "pip install -e '.[postgres]' (psycopg 3)"}


def _create(create_engine, parsed, url: str, **kwargs):
    """create_engine, with an unknown dialect or a missing driver as one sentence naming the fix."""
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    backend = parsed.get_backend_name()
    try:
        return create_engine(parsed, **kwargs)
    except NoSuchModuleError as e:
        raise StoreError(
            f"database URL {safe_url(url)} names {parsed.drivername!r}, which SQLAlchemy does not "
            f"know: use sqlite:////path/planner.db or postgresql+psycopg://user@host/dbname"
        ) from e
    except ImportError as e:
        fix = _EXTRAS.get(backend, f"install the Python driver {e.name or parsed.drivername!r}")
        raise StoreError(
            f"database URL {safe_url(url)} needs the driver {e.name or parsed.drivername!r}, which is "
            f"not installed: {fix}, or use a sqlite:/// URL"
        ) from e
    except ArgumentError as e:
        raise StoreError(f"database URL {safe_url(url)} cannot be used ({e}): check its options") from e


def refuse_in_memory(url: str) -> None:
    """An in-memory SQLite database keeps nothing past the command: the CLI refuses it (the
    library accepts it, for throwaway stores in tests and notebooks)."""
    parsed = parse_url(url)
    database = parsed.database or ""
    query = {k: str(v) for k, v in parsed.query.items()}
    if (not database or database == ":memory:" or ":memory:" in database
            or "mode=memory" in database or query.get("mode") == "memory"):
        raise StoreError(
            f"database URL {safe_url(url)} is an in-memory SQLite database, and nothing stored in it "
            f"would be kept: give a file, e.g. sqlite:////path/planner.db, or leave --db out for the default"
        )


def reader(engine):
    """The same engine, starting plain (deferred) transactions: reads never take the write lock."""
    return engine.execution_options(**{_WRITE: False})


def translate(error: Exception, url: str) -> StoreError:
    """A database error as the one-sentence `StoreError` a user can act on."""
    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    lowered = text.lower()
    if any(w in lowered for w in _LOCKED_WORDS):
        return DatabaseLocked(
            f"the database {safe_url(url)} is locked by another process (still locked after a few "
            "seconds of retries): let the other planner process finish, or run again"
        )
    if sqlite_path(url) is not None and any(w in lowered for w in _UNWRITABLE_WORDS):
        return unwritable(url, text)
    from sqlalchemy.exc import IntegrityError, OperationalError

    if isinstance(error, IntegrityError):
        return StoreError(f"the database {safe_url(url)} refused a write ({text}): report this as a bug")
    if isinstance(error, OperationalError) and any(w in lowered for w in _TIMEOUT_WORDS):
        parsed = parse_url(url)
        where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
        seconds = parsed.query.get("connect_timeout", CONNECT_TIMEOUT_S)
        return StoreError(
            f"the database server {where} ({safe_url(url)}) did not answer within {seconds} s: check "
            f"the host and port, and that PostgreSQL is running and reachable there"
        )
    if isinstance(error, OperationalError):
        return StoreError(
            f"cannot use the database {safe_url(url)} ({text}): check the URL and that the server is running"
        )
    return StoreError(f"the database {safe_url(url)} failed ({text}): check the URL and the database")


@contextmanager
def session_scope(engine, url: str, *, write: bool = True) -> Iterator["Session"]:
    """One transaction: commit on success, roll back on any error, always close."""
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.orm import Session

    session = Session(bind=engine if write else reader(engine), expire_on_commit=False)
    try:
        yield session
        session.commit()
    except SQLAlchemyError as e:
        _quiet_rollback(session)
        raise translate(e, url) from e
    except BaseException:
        _quiet_rollback(session)
        raise
    finally:
        session.close()


def _quiet_rollback(session) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    try:
        session.rollback()
    except SQLAlchemyError:  # the connection is already gone; closing discards it
        pass


def run_transaction(
    engine, url: str, work: Callable[["Session"], T], *, write: bool = True,
    retries: int = 3, backoff_s: float = 0.05,
) -> T:
    """Run `work(session)` in one transaction, again from the start while the database is locked."""
    for attempt in range(retries + 1):
        try:
            with session_scope(engine, url, write=write) as session:
                return work(session)
        except DatabaseLocked:
            if attempt == retries:
                raise
            time.sleep(backoff_s * (2**attempt))
    raise AssertionError("unreachable")
