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
- Dequantization on the device (GGUF, bitsandbytes NF4): the packed bytes read + 2 bytes per
  element written, over DRAM bandwidth x 0.4 (`DEQUANT_EFFICIENCY`): the kernels unpack
  scales and codes before they stream (gguf dequant kernels and bitsandbytes' reach 30-50 %
  of a plain copy), so a Q4_K block dequantizes at about a third of an fp8 cast's rate per byte.
  Its transient is one matrix at a time: about 6 bytes per element of the largest quantized
  matrix (the fp16 dequantized copy, its bf16 cast and the unpacked codes), added to the
  workspace (`DEQUANT_WORKSPACE_PER_ELEMENT`).
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
from profiler.types import REFERENCE_DISK_GBPS, Bandwidth, BandwidthPoint, BlockProfile, MachineFacts, Profile
from runtime.dtypes import DType, compute_dtype
from runtime.errors import UserError
from runtime.workload import Workload

COMPUTE_EFFICIENCY = {Segment.GEFORCE: 0.5, Segment.DATACENTER: 0.6, Segment.LOW_POWER: 0.4}
PINNED_EFFICIENCY = 0.80
UNDER_COMPUTE_EFFICIENCY = 0.75
PAGEABLE_EFFICIENCY = 0.35
COPY_OVERHEAD_US = 6.0
MEMORY_EFFICIENCY = 0.8
DEQUANT_EFFICIENCY = 0.4  # dequantization kernels: unpacking before streaming
WORKSPACE_BYTES = 128 * 2**20
DEQUANT_WORKSPACE_PER_ELEMENT = 6
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
        disk_read_gbps=REFERENCE_DISK_GBPS,  # a Gen3 NVMe drive: profiler.types states it
    )


def cast_ms_estimate(fp8_bytes: int, memory_gbps: float) -> float:
    """fp8 -> bf16 cast of `fp8_bytes` of weights: read 1 + write 2 bytes per element."""
    moved = fp8_bytes * 3
    return moved / (memory_gbps * 1e9 * MEMORY_EFFICIENCY) * 1e3


def dequant_ms_estimate(dtype: DType, packed_bytes: int, memory_gbps: float) -> float:
    """Dequantization of `packed_bytes` stored as `dtype` to bf16: read packed, write 2 per element."""
    moved = packed_bytes + dtype.numel_of(packed_bytes) * 2
    return moved / (memory_gbps * 1e9 * DEQUANT_EFFICIENCY) * 1e3


def cast_ms_of(bytes_by_dtype, memory_gbps: float) -> float:
    """On-device cast and dequantization time of one block's tensors."""
    total = 0.0
    for name, num_bytes in bytes_by_dtype.items():
        dtype = DType(name)
        if dtype.is_fp8 and num_bytes:
            total += cast_ms_estimate(num_bytes, memory_gbps)
        elif dtype.is_quantized and num_bytes:
            total += dequant_ms_estimate(dtype, num_bytes, memory_gbps)
    return total


@functools.lru_cache(maxsize=16)
def _dequant_workspace(model_id: str, storage: DType) -> int:
    """Transient bytes of dequantizing the model's largest quantized matrix (0 if none)."""
    if not storage.is_quantized:
        return 0
    from runtime.catalog import get_model
    from runtime.dtypes import storage_dtype
    from runtime.families import get_family

    spec = get_model(model_id)
    model = get_family(spec.family).build(spec.config, device="meta")
    largest = max(
        (p.numel() for p in model.parameters() if storage_dtype(storage, tuple(p.shape)) is storage),
        default=0,
    )
    return largest * DEQUANT_WORKSPACE_PER_ELEMENT


@functools.lru_cache(maxsize=16)
def _inventory(model_id: str, storage: DType):
    from runtime.inventory import inventory

    return inventory(model_id, storage)


def reference_profile(
    gpu: str, model_id: str, workload: Workload, storage_dtype: DType | None = None,
    inventory=None,
) -> Profile:
    """An estimated profile of `model_id` at `workload` on the reference GPU `gpu`; of the
    given `inventory` (a checkpoint's exact bytes) where there is one, else the catalog's."""
    from runtime.catalog import get_model

    spec = find_gpu(gpu)
    storage = storage_dtype or get_model(model_id).storage_dtype
    return _reference_profile(spec, model_id, workload, storage, inventory)


def _reference_profile(spec: GpuSpec, model_id: str, workload: Workload, storage: DType,
                       inventory=None) -> Profile:
    from profiler.flops import model_trace
    from runtime.version import TOOL_VERSION

    compute = compute_dtype(storage)
    inv = inventory if inventory is not None else _inventory(model_id, storage)
    flops = model_trace(model_id, workload, compute)
    rate = compute_tflops(spec, compute) * 1e12
    blocks = []
    for info, trace in zip(inv.blocks, flops.blocks):
        name, kind, count = trace.name, trace.kind, trace.flops
        assert info.name == name, (info.name, name)
        blocks.append(
            BlockProfile(
                name=name,
                kind=kind,
                index=info.index,
                bytes=info.bytes,
                compute_ms=count / rate * 1e3,
                cast_ms=cast_ms_of(info.bytes_by_dtype, spec.memory_gbps),
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
        workspace_bytes=WORKSPACE_BYTES + _dequant_workspace(model_id, storage),
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
