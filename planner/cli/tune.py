"""`planner tune` (owned by the planner work; placeholder until it lands)."""

import typer


def tune() -> None:
    """Find the fastest plan that fits a VRAM budget."""
    raise typer.Exit(1)
