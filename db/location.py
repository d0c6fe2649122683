"""Where the store lives: `--db URL`, else `PLANNER_DB_URL`, else SQLite in the user data dir."""

from __future__ import annotations

import os
from pathlib import Path

from db.errors import StoreError

ENV_VAR = "PLANNER_DB_URL"
APP_NAME = "offload-planner"
_FIX = "pass a writable location with --db sqlite:////path/to/planner.db or set PLANNER_DB_URL"


def default_db_url() -> str:
    """`PLANNER_DB_URL` if set, else `sqlite:///<user data dir>/planner.db`."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return env
    from platformdirs import user_data_dir

    return f"sqlite:///{Path(user_data_dir(APP_NAME)) / 'planner.db'}"


def resolve_url(url: str | None) -> str:
    url = (url or "").strip()
    return url or default_db_url()


def parse_url(url: str):
    """The parsed SQLAlchemy URL; a clear error for anything else."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except ArgumentError as e:
        raise StoreError(
            f"database URL {url!r} is not a SQLAlchemy URL: write e.g. sqlite:////path/planner.db "
            "or postgresql+psycopg://user@host/dbname"
        ) from e


def sqlite_path(url: str) -> Path | None:
    """The file a SQLite URL names; None for other backends and in-memory SQLite."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    if not parsed.database or parsed.database == ":memory:" or parsed.database.startswith("file:"):
        return None
    return Path(parsed.database).expanduser()


def prepare_sqlite_file(url: str) -> None:
    """Create the directory a SQLite file goes in; a clear error where that cannot be done."""
    path = sqlite_path(url)
    if path is None:
        return
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(
            f"cannot create the directory {parent} for the database {path} ({e.strerror}): {_FIX}"
        ) from e
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise StoreError(f"the database {path} is on a path this user cannot write: {_FIX}")


def unwritable(url: str, reason: str) -> StoreError:
    """The error for a database file SQLite could not open or write."""
    path = sqlite_path(url)
    where = f"the database {path}" if path else f"the database {safe_url(url)}"
    return StoreError(f"{where} cannot be opened for writing ({reason}): {_FIX}")


def safe_url(url: str) -> str:
    """The URL with any password hidden, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is shown as typed: it holds no parsed password
        return url
