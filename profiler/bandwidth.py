"""Host-to-device bandwidth: pinned and pageable by size, pinned while compute runs, and the
fixed cost of one copy call.

On CUDA the copies are timed with CUDA events on the stream that runs them (warm-up first,
median of several). The "under compute" figure launches a long matmul loop on the default
stream and copies on a side stream while it runs: that is the bandwidth a streamed plan gets.
On CPU "host-to-device" is a memcpy between two host tensors, timed the same way with
`perf_counter`; pinned and pageable are the same memory there, and "under compute" runs the
matmul loop in a second thread.
"""

from __future__ import annotations

import statistics
import threading
import time

from profiler.timing import timed
from profiler.types import Bandwidth, BandwidthPoint

MIB = 2**20
SIZES = (1 * MIB, 8 * MIB, 64 * MIB)
TINY_COPIES = 200
_TARGET_BYTES = 256 * MIB  # bytes moved per size and kind: reps = clamp(target / size, 3, 10)


def copy_sizes(largest_block_bytes: int) -> tuple[int, ...]:
    """1 MiB, 8 MiB, 64 MiB and the largest block when it is bigger."""
    return tuple(sorted(set(SIZES) | ({largest_block_bytes} if largest_block_bytes > SIZES[-1] else set())))


def measure_bandwidth(device, sizes: tuple[int, ...], progress=None) -> Bandwidth:
    """Measured bandwidth on `device` (a torch.device) for copies of `sizes` bytes."""
    points = []
    for n, size in enumerate(sizes):
        pinned = _copy_gbps(device, size, pinned=True)
        pageable = _copy_gbps(device, size, pinned=False)
        points.append(BandwidthPoint(size, pinned, pageable))
        if progress:
            progress("bandwidth", n + 1, len(sizes) + 2)
    largest = max(sizes)
    under = _under_compute_gbps(device, largest)
    overhead = copy_overhead_us(device)
    if progress:
        progress("bandwidth", len(sizes) + 2, len(sizes) + 2)
    return Bandwidth(
        pinned_gbps=points[-1].pinned_gbps,
        pageable_gbps=points[-1].pageable_gbps,
        pinned_under_compute_gbps=under,
        copy_overhead_us=overhead,
        by_size=tuple(points),
    )


def _buffers(device, size: int, pinned: bool):
    import torch

    use_pin = pinned and device.type == "cuda"
    src = torch.empty(size, dtype=torch.uint8, pin_memory=use_pin)
    src.fill_(1)  # touch every page so the first timed copy does not fault them in
    dst = torch.empty(size, dtype=torch.uint8, device=device)
    return src, dst


def _reps(size: int) -> int:
    return max(3, min(10, _TARGET_BYTES // size))


def _copy_gbps(device, size: int, pinned: bool) -> float:
    """Median GB/s of copying `size` bytes host -> device."""
    src, dst = _buffers(device, size, pinned)
    dst.copy_(src, non_blocking=pinned)  # warm-up
    _sync(device)
    times = [_timed_copy(device, src, dst, pinned) for _ in range(_reps(size))]
    return size / statistics.median(times) / 1e9


def _timed_copy(device, src, dst, non_blocking: bool) -> float:
    """Seconds one copy takes: CUDA events on the current stream, perf_counter on CPU."""
    import torch

    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src, non_blocking=non_blocking)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    dst.copy_(src)
    return time.perf_counter() - begin


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_overhead_us(device) -> float:
    """Fixed cost of one copy call: wall time of many tiny copies, divided by their number."""
    src, dst = _buffers(device, 256, pinned=True)
    for _ in range(10):
        dst.copy_(src, non_blocking=True)
    _sync(device)
    samples = []
    for _ in range(3):
        begin = time.perf_counter()
        for _ in range(TINY_COPIES):
            dst.copy_(src, non_blocking=True)
        _sync(device)
        samples.append((time.perf_counter() - begin) / TINY_COPIES * 1e6)
    return statistics.median(samples)


def _under_compute_gbps(device, size: int) -> float:
    if device.type == "cuda":
        return _under_compute_cuda(device, size)
    return _under_compute_cpu(device, size)


def _matmul_operands(device, n: int):
    import torch

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)


def _under_compute_cuda(device, size: int) -> float:
    """Pinned copy on a side stream while a matmul loop keeps the default stream busy."""
    import torch

    src, dst = _buffers(device, size, pinned=True)
    a, b = _matmul_operands(device, 4096)
    torch.matmul(a, b)  # warm-up: cuBLAS handle and kernel selection
    dst.copy_(src, non_blocking=True)
    torch.cuda.synchronize(device)
    matmul_s = timed(device, lambda: torch.matmul(a, b))
    copy_s = _timed_copy(device, src, dst, True)
    loops = max(4, int(3 * copy_s / max(matmul_s, 1e-6)) + 1)  # compute outlasts the copy 3x
    side = torch.cuda.Stream(device)
    times = []
    for _ in range(3):
        torch.cuda.synchronize(device)
        for _ in range(loops):
            torch.matmul(a, b)  # queued on the default stream, runs while the copy runs
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(side):
            start.record(side)
            dst.copy_(src, non_blocking=True)
            end.record(side)
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end) / 1e3)
    return size / statistics.median(times) / 1e9


def _under_compute_cpu(device, size: int) -> float:
    """Host memcpy while a second thread runs a matmul loop (torch releases the GIL)."""
    import torch

    src, dst = _buffers(device, size, pinned=False)
    a, b = _matmul_operands(device, 256)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            torch.matmul(a, b)

    worker = threading.Thread(target=busy, daemon=True)
    worker.start()
    try:
        times = [_timed_copy(device, src, dst, False) for _ in range(3)]
    finally:
        stop.set()
        worker.join()
    return size / statistics.median(times) / 1e9
