"""Reference profiles: what a model's blocks would cost on a GPU you do not have.

Made from the spec sheet (profiler.gpus) and the model's exact FLOPs and bytes, never from a
measurement; every profile says so (`is_estimate=True`, `source="estimate from <sheet>"`).
The assumptions, each a named constant below:

- Compute: FLOPs / (dense tensor peak x efficiency). GeForce 0.5: a large bf16 GEMM reaches
  70-80 % of peak on these cards, but boost clocks sag under sustained tensor load and
  attention, norms, RoPE and elementwise ops run far below peak, so a whole FLUX block lands
  near half. Data-center cards 0.6 (clocks hold, HBM feeds the elementwise ops). L4 0.4: its
  72 W limit keeps it well under the 2.04 GHz boost the datasheet rate assumes.
- Bandwidth: PCIe link rate (per-lane GB/s x lanes) x 0.80 for pinned copies on an idle device
  (TLP headers and DMA descriptors eat the rest), x 0.75 for pinned copies while compute runs
  (copy engines are separate from the SMs; the loss is DRAM contention), x 0.35 for pageable
  copies (the driver stages them through a bounce buffer and they do not overlap).
- Copy overhead: 6 us per copy call (cudaMemcpyAsync launch + DMA setup, 5-7 us measured by
  peers).
- fp8 -> bf16 cast on the device: bytes read (1 per element) + written (2 per element) over
  DRAM bandwidth x 0.8 (a streaming elementwise kernel's achieved fraction).
- Compute and activation peaks come from the model's own forward traced on `meta`
  (`profiler.flops`): exact FLOPs, and the bytes live inside each block above what was live
  before it, attention as one fused op (flash/memory-efficient SDPA: no seq^2 score matrix).
  On an H100 the measured peaks of flux-dev's blocks at 1024x1024 were 5-17 % above the count
  (allocator rounding, and the profiler's standalone block keeps its inputs and output alive).
- Workspace: 128 MiB of what torch's allocator holds besides weights and a block's activation:
  cuBLAS/cuBLASLt workspaces (8-64 MiB by card) and the hidden states carried between blocks
  (33 MB for FLUX at 1024x1024). The CUDA context is outside the allocator: `planner.reserve`
  takes a stated margin for it off the card's memory.
"""

from __future__ import annotations

import datetime
import functools

from profiler.gpus import GpuSpec, Segment, keys, link_gbps, normalize, specs
from profiler.types import Bandwidth, BandwidthPoint, BlockProfile, MachineFacts, Profile
from runtime.dtypes import DType, compute_dtype
from runtime.errors import UserError
from runtime.workload import Workload

COMPUTE_EFFICIENCY = {Segment.GEFORCE: 0.5, Segment.DATACENTER: 0.6, Segment.LOW_POWER: 0.4}
PINNED_EFFICIENCY = 0.80
UNDER_COMPUTE_EFFICIENCY = 0.75
PAGEABLE_EFFICIENCY = 0.35
COPY_OVERHEAD_US = 6.0
MEMORY_EFFICIENCY = 0.8
WORKSPACE_BYTES = 128 * 2**20
_MIB = 2**20


def reference_gpus() -> list[GpuSpec]:
    """Every GPU a reference profile can be made for."""
    return list(specs())


def find_gpu(name: str) -> GpuSpec:
    """The reference GPU `name` means: its id, driver name or a short alias, any case."""
    key = normalize(str(name))
    matches = [spec for spec in specs() if key and key in keys(spec)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(spec.id for spec in specs())
    raise UserError(f"unknown GPU {name!r}: use one of the reference GPUs {known}")


def compute_tflops(spec: GpuSpec, dtype: DType) -> float:
    """The sustained rate a reference profile assumes for matmuls in `dtype`, TFLOP/s."""
    peak = spec.fp32_tflops if dtype is DType.FP32 else spec.bf16_dense_tflops
    return peak * COMPUTE_EFFICIENCY[spec.segment]


def reference_bandwidth(spec: GpuSpec, sizes: tuple[int, ...] = ()) -> Bandwidth:
    """Estimated host-to-device bandwidth on `spec`'s PCIe link."""
    link = link_gbps(spec)
    pinned, pageable = link * PINNED_EFFICIENCY, link * PAGEABLE_EFFICIENCY

    def effective(size: int, gbps: float) -> float:  # fixed overhead per copy, then the stream
        return size / (COPY_OVERHEAD_US * 1e-6 + size / (gbps * 1e9)) / 1e9

    points = tuple(
        BandwidthPoint(size, effective(size, pinned), effective(size, pageable))
        for size in sorted(set(sizes))
    )
    return Bandwidth(
        pinned_gbps=pinned,
        pageable_gbps=pageable,
        pinned_under_compute_gbps=link * UNDER_COMPUTE_EFFICIENCY,
        copy_overhead_us=COPY_OVERHEAD_US,
        by_size=points,
    )


def cast_ms_estimate(fp8_bytes: int, memory_gbps: float) -> float:
    """fp8 -> bf16 cast of `fp8_bytes` of weights: read 1 + write 2 bytes per element."""
    moved = fp8_bytes * 3
    return moved / (memory_gbps * 1e9 * MEMORY_EFFICIENCY) * 1e3


@functools.lru_cache(maxsize=16)
def _inventory(model_id: str, storage: DType):
    from runtime.inventory import inventory

    return inventory(model_id, storage)


def reference_profile(
    gpu: str, model_id: str, workload: Workload, storage_dtype: DType | None = None
) -> Profile:
    """An estimated profile of `model_id` at `workload` on the reference GPU `gpu`."""
    from runtime.catalog import get_model

    spec = find_gpu(gpu)
    storage = storage_dtype or get_model(model_id).storage_dtype
    return _reference_profile(spec, model_id, workload, storage)


def _reference_profile(spec: GpuSpec, model_id: str, workload: Workload, storage: DType) -> Profile:
    from profiler.flops import model_trace
    from runtime.version import TOOL_VERSION

    compute = compute_dtype(storage)
    inv = _inventory(model_id, storage)
    flops = model_trace(model_id, workload, compute)
    rate = compute_tflops(spec, compute) * 1e12
    blocks = []
    for info, trace in zip(inv.blocks, flops.blocks):
        name, kind, count = trace.name, trace.kind, trace.flops
        assert info.name == name, (info.name, name)
        fp8_bytes = sum(n for d, n in info.bytes_by_dtype.items() if DType(d).is_fp8)
        blocks.append(
            BlockProfile(
                name=name,
                kind=kind,
                index=info.index,
                bytes=info.bytes,
                compute_ms=count / rate * 1e3,
                cast_ms=cast_ms_estimate(fp8_bytes, spec.memory_gbps) if fp8_bytes else 0.0,
                activation_bytes=trace.activation_bytes,
            )
        )
    largest = max(b.bytes for b in blocks)
    return Profile(
        machine=_machine(spec),
        device=f"reference:{spec.id}",
        model_id=model_id,
        workload=workload,
        storage_dtype=storage,
        compute_dtype=compute,
        bandwidth=reference_bandwidth(spec, (_MIB, 16 * _MIB, 256 * _MIB, largest)),
        blocks=tuple(blocks),
        non_block_ms=flops.non_block / rate * 1e3,
        non_block_bytes=inv.non_block_bytes,
        workspace_bytes=WORKSPACE_BYTES,
        is_estimate=True,
        source=f"estimate from {spec.source}",
        tool_version=TOOL_VERSION,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def _machine(spec: GpuSpec) -> MachineFacts:
    return MachineFacts(
        fingerprint=f"reference:{spec.id}",
        hostname="reference",
        gpu_name=spec.name,
        gpu_memory_bytes=spec.memory_bytes,
        pcie_gen=spec.pcie_gen,
        pcie_width=spec.pcie_lanes,
        pcie_gen_max=spec.pcie_gen,
        pcie_width_max=spec.pcie_lanes,
        driver=None,
        cuda=None,
        torch="none (estimate)",
        host_ram_bytes=0,  # unknown: a reference GPU has no host; planners supply their own
    )
