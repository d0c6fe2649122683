"""Options and output helpers every command shares. Imports nothing heavy."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

DbOption = Annotated[
    Optional[str],
    typer.Option(
        "--db",
        envvar="PLANNER_DB_URL",
        help="Database URL (SQLAlchemy); default: SQLite in the user data directory.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, allow_nan=False))


def print_table(title: str | None, columns: list[str], rows: list[list[Any]]) -> None:
    """An aligned table (rich); numbers right-aligned."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title) if title else None, show_edge=False, header_style="bold")
    for i, name in enumerate(columns):
        numeric = bool(rows) and all(isinstance(r[i], (int, float)) for r in rows)
        table.add_column(name, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(escape(_cell(v)) for v in row))
    Console(width=200).print(table)


def _cell(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
