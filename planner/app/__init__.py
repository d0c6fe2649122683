"""The application layer: the work that joins the planner library, the store (db) and the
runtime engine — `tune` (with --verify), stored or measured profiles, calibration from recorded
runs, recording a measured run, comparing formats. The CLI (planner/cli) and the ComfyUI nodes
call this; the planner library below it imports neither `db` nor `runtime.engine`."""
