"""Per-block costs measured on the device: compute time, fp8 -> bf16 cast time (or, for GGUF
and NF4 storage, dequantization time), activation peak
(on CPU, where no allocator reports a peak, the count from `profiler.flops`'s meta forward).

One block at a time, so a GPU far smaller than the model profiles it: the block is copied from
the model built on `meta`, materialised on the device with random weights of the right shape
and dtype (`to_empty` + `normal_`: random weights time the same as real ones), run on
representative inputs from the family adapter, and dropped. Blocks of one kind with the same
shapes cost the same, so the caller measures each shape once (see `shape_key`).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics

from profiler.timing import timed as _timed
from runtime.dtypes import DType
from runtime.workload import Workload

WARMUP = 2
REPEATS = 7


@dataclasses.dataclass(frozen=True)
class BlockCost:
    compute_ms: float  # median of REPEATS forwards after WARMUP
    cast_ms: float  # median fp8 -> bf16 cast, or dequantization, of the block's weights (0 if none)
    activation_bytes: int
    activation_measured: bool  # False: the reference formula (no allocator to ask on CPU)
    flops: int

    @property
    def tflops(self) -> float:
        """Achieved rate of the forward, TFLOP/s."""
        return self.flops / (self.compute_ms * 1e-3) / 1e12 if self.compute_ms > 0 else 0.0


def shape_key(kind: str, block) -> tuple:
    """Blocks with equal keys have the same cost: kind, class and every parameter's shape."""
    shapes = tuple((name, tuple(p.shape), str(p.dtype)) for name, p in block.named_parameters())
    return (kind, type(block).__name__, shapes)


def materialise(block_meta, device, dtype):
    """A copy of a `meta` block on `device` in `dtype` with random weights."""
    from runtime.random_weights import fill_random_

    block = copy.deepcopy(block_meta).to(dtype=dtype)
    block = block.to_empty(device=device)
    fill_random_(block)
    return block.eval()


def measure_block(
    model_meta, adapter, kind: str, block_meta, workload: Workload, storage: DType, device,
    compute: DType, trace=None,
) -> BlockCost:
    """Cost of one block of `kind` at `workload` on `device` (a torch.device). `trace` is the
    block's `profiler.flops.BlockTrace` (FLOPs, activation counted on `meta`); without it the
    model's forward is traced here."""
    import torch

    if trace is None:
        trace = _trace_of(model_meta, adapter, block_meta, workload, compute)
    dtype = compute.torch()
    block = materialise(block_meta, device, dtype)
    inputs = adapter.block_inputs(model_meta, kind, workload, device, dtype)
    try:
        with torch.inference_mode():
            for _ in range(WARMUP):
                block(*inputs.args, **inputs.kwargs)
            times = [_timed(device, lambda: block(*inputs.args, **inputs.kwargs)) for _ in range(REPEATS)]
            if device.type == "cuda":
                activation, measured = _activation_peak(device, block, inputs), True
            else:
                activation, measured = trace.activation_bytes, False
        if storage.is_fp8:
            cast = _cast_ms(block, device)
        elif storage.is_quantized:
            cast = dequant_ms(block, device, storage)
        else:
            cast = 0.0
    finally:
        del block, inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return BlockCost(
        compute_ms=statistics.median(times) * 1e3,
        cast_ms=cast,
        activation_bytes=activation,
        activation_measured=measured,
        flops=trace.flops,
    )


def _trace_of(model_meta, adapter, block_meta, workload: Workload, compute: DType):
    from profiler.flops import trace_module

    name = next(n for n, _, b in adapter.blocks(model_meta) if b is block_meta)
    model = _in_dtype(model_meta, compute)
    return trace_module(model, adapter, workload, compute).block(name)


def _in_dtype(model_meta, compute: DType):
    """`model_meta` in the compute dtype (a copy where it differs; meta copies are free)."""
    import torch

    if all(p.dtype == compute.torch() for p in model_meta.parameters()):
        return model_meta
    return torch.nn.Module.to(copy.deepcopy(model_meta), compute.torch())


def _activation_peak(device, block, inputs) -> int:
    """Bytes the forward allocates at its peak beyond what was allocated before it."""
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = block(*inputs.args, **inputs.kwargs)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del out
    return int(peak)


def _cast_ms(block, device) -> float:
    """Median ms to cast the block's matrices from fp8 (e4m3) into preallocated bf16 buffers,
    as the runtime does on the device when storage is fp8 (vectors are stored in bf16)."""
    import torch

    matrices = [p for p in block.parameters() if p.dim() >= 2]
    fp8 = [m.detach().to(torch.float8_e4m3fn) for m in matrices]
    out = [torch.empty(m.shape, dtype=torch.bfloat16, device=device) for m in matrices]

    def cast() -> None:
        for src, dst in zip(fp8, out):
            dst.copy_(src)

    cast()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = [_timed(device, cast) for _ in range(REPEATS)]
    return statistics.median(times) * 1e3


def dequant_ms(block, device, storage: DType) -> float:
    """Median ms to dequantize the block's matrices stored as `storage` (GGUF or NF4) into bf16,
    with the runtime's own dequantization (`runtime.engine.quantized`), one matrix at a time as
    its hooks do. The packed bytes are random (GGUF) or a random matrix quantized by
    bitsandbytes (NF4): the kernels' time does not depend on the values."""
    import torch

    from runtime.dtypes import storage_dtype
    from runtime.engine.quantized import QuantInfo, dequantize

    work = []
    for p in block.parameters():
        shape = tuple(p.shape)
        if storage_dtype(storage, shape) is not storage:
            continue
        if storage is DType.NF4:
            import bitsandbytes.functional as F

            packed, state = F.quantize_4bit(
                torch.randn(shape, dtype=torch.bfloat16, device=device), blocksize=64,
                quant_type="nf4", compress_statistics=True,
            )
            info = QuantInfo(storage, shape, packed.numel(), state)
        else:
            numel = p.numel()
            rows = numel // shape[-1]
            packed = torch.randint(0, 256, (rows, storage.nbytes(shape[-1])), dtype=torch.uint8,
                                   device=device)
            info = QuantInfo(storage, shape, packed.numel())
        work.append((packed, info))
    if not work:
        return 0.0

    def run() -> None:
        for packed, info in work:
            dequantize(packed, info, torch.bfloat16)

    run()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = [_timed(device, run) for _ in range(REPEATS)]
    return statistics.median(times) * 1e3
