"""Options and output helpers every command shares. Imports nothing heavy."""

from __future__ import annotations

import json
import os
import re
import sys
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


# C0 controls, DEL, C1 controls, and the bidirectional overrides that can reorder what a
# terminal shows: text read from plans, checkpoints and the store is printed with these escaped.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def inert(value: Any) -> str:
    """`value` as text a terminal shows literally: control characters become `\\xNN` escapes
    (a plan named "\\x1b[2J" cannot clear the screen or set the window title)."""
    return _CONTROL.sub(_escape, str(value))


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


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
