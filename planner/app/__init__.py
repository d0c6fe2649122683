"""The application layer: where planner, store and engine meet (first-step auto, tune)."""
