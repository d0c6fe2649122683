"""Runtime: knows model families and executes offload plans.

`from runtime import apply_plan` (and `apply_auto`) is the Python API. Importing this package touches nothing
heavy; torch is imported by the modules that need it, when they are first used.
"""


def __getattr__(name: str):
    if name == "apply_plan":
        from runtime.apply import apply_plan

        return apply_plan
    if name == "apply_auto":  # the application layer's first-step auto (planner.app.auto)
        from planner.app.auto import apply_auto

        return apply_auto
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
