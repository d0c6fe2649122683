"""The application layer: the work that joins the planner library, the store (db) and the
runtime engine — `tune` (with --verify), stored or measured profiles, calibration from recorded
runs, recording a measured run, comparing formats, and `apply_auto` (first-step auto: any
module measured on its first forward, tuned, switched). The CLI (planner/cli) and the ComfyUI
nodes call this; the planner library below it imports neither `db` nor `runtime.engine`."""
