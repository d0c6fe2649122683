"""Runtime: knows model families and executes offload plans.

`from runtime import apply_plan` is the Python API (first-step auto, which needs the planner
above this layer: `from planner.app import apply_auto`). Importing this package touches nothing
heavy; torch is imported by the modules that need it, when they are first used.
"""


def __getattr__(name: str):
    if name == "apply_plan":
        from runtime.apply import apply_plan

        return apply_plan
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
