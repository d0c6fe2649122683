"""`planner plans ...`: the plan schema here; stored-plan queries come with the store."""

from __future__ import annotations

import typer

from planner.cli._common import print_json

app = typer.Typer(no_args_is_help=True)


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of the plan file format."""
    from runtime.plan_schema import plan_schema

    print_json(plan_schema())
