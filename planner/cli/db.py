"""`planner db` (owned by the store work; placeholder until it lands)."""

import typer

app = typer.Typer(no_args_is_help=True)
