"""Timing one call on a device: CUDA events on a GPU, perf_counter on the CPU."""

from __future__ import annotations

import time


def timed(device, fn) -> float:
    """Seconds `fn` takes on `device`: CUDA events around it, perf_counter on CPU."""
    import torch

    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin
