"""The application layer: the work that joins the planner library, the store (db) and the
runtime engine — `tune` (with --verify), stored or measured profiles, calibration from recorded
runs, recording a measured run, comparing formats, `apply_auto` (first-step auto: any
module measured on its first forward, tuned, switched) and any pipeline folder run under it
(`any_pipeline`, `any_profile`). The CLI (planner/cli) and the ComfyUI nodes call this; the
planner library below it imports neither `db` nor `runtime.engine`."""


def __getattr__(name: str):
    if name == "apply_auto":  # `from planner.app import apply_auto`, without importing torch here
        from planner.app.auto import apply_auto

        return apply_auto
    raise AttributeError(f"module 'planner.app' has no attribute {name!r}")
