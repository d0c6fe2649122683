"""Options and output helpers every command shares. Imports nothing heavy."""

from __future__ import annotations

import json
import os
import sys
import unicodedata
from typing import Annotated, Any, Optional

import typer

def _db_url(value: Optional[str]) -> Optional[str]:
    """--db / PLANNER_DB_URL: an in-memory SQLite URL would keep nothing past the command."""
    if value and value.strip().lower().startswith("sqlite"):
        from db.session import refuse_in_memory

        refuse_in_memory(value.strip())
    return value


def check_output(path, option: str, db: Optional[str], suffixes: tuple[str, ...] = (),
                 example: Optional[str] = None):
    """`runtime.files.check_target`, and not the store's own file (nor its journal), even
    where that file does not exist yet: an output never replaces the database."""
    from pathlib import Path

    from db.location import resolve_url, sqlite_path
    from runtime.errors import UserError
    from runtime.files import check_target

    target = check_target(path, option, suffixes, example)
    store = sqlite_path(resolve_url(db))
    if store is not None:
        mine = Path(os.path.abspath(target))
        for name in (store, *(Path(f"{store}{s}") for s in ("-journal", "-wal", "-shm"))):
            if mine == Path(os.path.abspath(name.expanduser())):
                raise UserError(
                    f"{option} {path} is the plan store's database file ({store}): give a new file "
                    f"name for the output, e.g. {mine.parent / (example or 'plan.json')}"
                )
    return target


def store_name(db: Optional[str]) -> str:
    """The store `--db` names, as a user finds it: a SQLite file's path, else the URL without
    its password."""
    from db.location import resolve_url, safe_url, sqlite_path

    url = resolve_url(db)
    path = sqlite_path(url)
    return str(path) if path is not None else safe_url(url)


DbOption = Annotated[
    Optional[str],
    typer.Option(
        "--db",
        envvar="PLANNER_DB_URL",
        callback=_db_url,
        help="Database URL (SQLAlchemy); default: SQLite in the user data directory.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


# Unicode categories a terminal does not show as themselves: controls (C0, DEL, C1), format
# characters (bidirectional marks and overrides, U+061C, zero-width ones) and the line and
# paragraph separators (U+2028, U+2029). Text read from plans, checkpoints and the store is
# printed with these escaped.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"})


def inert(value: Any) -> str:
    """`value` as text a terminal shows literally: hidden characters become `\\xNN` or
    `\\uNNNN` escapes (a plan named "\\x1b[2J" cannot clear the screen or set the window title,
    one with U+2028 cannot break a line, one with U+061C cannot reorder it)."""
    text = str(value)
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(c) if unicodedata.category(c) in _HIDDEN else c for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def echo(line: Any = "", err: bool = False) -> None:
    """One line of human output, made inert (a newline inside it is escaped too)."""
    typer.echo(inert(line), err=err)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, allow_nan=False))  # ensure_ascii: controls are \uXXXX


def print_table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    """An aligned table (rich); numbers right-aligned."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(inert(title)) if title else None, show_edge=False, header_style="bold")
    for i, name in enumerate(columns):
        numeric = bool(rows) and all(isinstance(r[i], (int, float)) for r in rows)
        table.add_column(name, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(escape(inert(_cell(v))) for v in row))
    console().print(table)


# Where output goes to a file or a pipe there is no terminal to fit: rows stay on one line
# (for grep and diff) up to this width, unless COLUMNS says otherwise.
PIPE_WIDTH = 240


def console(stderr: bool = False):
    """A rich console as wide as the terminal (COLUMNS where set; wide rows into pipes)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    is_tty = hasattr(stream, "isatty") and stream.isatty()
    width = None if is_tty or os.environ.get("COLUMNS", "").strip().isdigit() else PIPE_WIDTH
    return Console(file=stream, width=width, highlight=False)


def _cell(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


class status:
    """A transient status line on stderr while slow work runs; nothing on a pipe or with --json."""

    def __init__(self, text: str, enabled: bool = True) -> None:
        self.text, self.enabled, self._status = text, enabled, None

    def __enter__(self) -> "status":
        if self.enabled and sys.stderr.isatty():
            self._status = console(stderr=True).status(inert(self.text))
            self._status.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)
