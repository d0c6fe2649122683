"""Profiler: measures a device and a model's blocks (or estimates them from spec sheets)."""
