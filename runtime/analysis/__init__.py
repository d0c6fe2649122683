"""What is inside the blocks: parameters by role, activation statistics, per-block sensitivity
to storage formats, and the per-block conversions (format, pruned MLP units) plans may ask for."""
