"""`planner profile` (owned by the profiler work; placeholder until it lands)."""

import typer


def profile() -> None:
    """Measure this machine's GPU and a model's blocks."""
    raise typer.Exit(1)
