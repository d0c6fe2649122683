"""`planner explain` (owned by the planner work; placeholder until it lands)."""

import typer


def explain() -> None:
    """Show where a plan's time goes."""
    raise typer.Exit(1)
