"""`planner apply` (owned by the runtime work; placeholder until it lands)."""

import typer


def apply() -> None:
    """Generate an image with a plan applied."""
    raise typer.Exit(1)
