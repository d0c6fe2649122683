"""`profile_model`: measure this device and one model's blocks at one workload.

Steps: device facts, host-to-device bandwidth (sizes up to the largest block), then each
distinct block shape once (FLUX has two: double and single), one block on the device at a time.
FLOPs and (on CPU) activation peaks come from one traced forward on `meta` (`profiler.flops`).
Non-block modules are timed from their FLOPs at the rate the blocks achieved (they are ~0.02 %
of FLUX's FLOPs).
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Callable, Optional

from profiler.types import BlockProfile, Profile
from runtime.dtypes import DType, compute_dtype
from runtime.workload import Workload

# progress(stage, done, total): stage is "bandwidth" or "blocks".
Progress = Optional[Callable[[str, int, int], None]]



@dataclasses.dataclass(frozen=True)
class ProfileRequest:
    model_id: str
    workload: Workload
    storage: DType
    device: str


def profile_model(
    model_id: str,
    workload: Workload,
    storage_dtype: DType | None,
    device: str,
    progress: Progress = None,
) -> Profile:
    """Measure `model_id`'s blocks at `workload` on `device` ("cpu", "cuda:0")."""
    from profiler.machine import parse_device
    from runtime.catalog import get_model

    spec = get_model(model_id)
    dev = parse_device(device)
    request = ProfileRequest(model_id, workload, storage_dtype or spec.storage_dtype, str(dev))
    return _profile(request, dev, progress)


def _profile(request: ProfileRequest, dev, progress: Progress) -> Profile:
    from profiler.bandwidth import copy_sizes, measure_bandwidth
    from profiler.disk import measure_disk
    from profiler.flops import meta_model, model_trace
    from profiler.machine import machine_facts
    from runtime.inventory import inventory_of_module
    from runtime.version import TOOL_VERSION

    baseline = _host_baseline(dev)  # before anything of the model exists
    compute = compute_dtype(request.storage)
    model, adapter = meta_model(request.model_id, compute)
    inv = inventory_of_module(model, adapter, request.model_id, request.storage)
    trace = model_trace(request.model_id, request.workload, compute)
    workspace = _workspace_bytes(model, adapter, request.workload, dev, compute)
    largest = max(b.bytes for b in inv.blocks)
    bandwidth = measure_bandwidth(dev, copy_sizes(largest), progress)
    disk = measure_disk(dev, largest)
    bandwidth = dataclasses.replace(bandwidth, disk_read_gbps=disk.read_gbps,
                                    disk_read_under_copy_gbps=disk.read_under_copy_gbps)
    costs = _measure_blocks(model, adapter, request, dev, compute, trace, progress)
    blocks = tuple(
        BlockProfile(
            name=info.name,
            kind=info.kind,
            index=info.index,
            bytes=info.bytes,
            compute_ms=costs[name].compute_ms,
            cast_ms=costs[name].cast_ms,
            activation_bytes=costs[name].activation_bytes,
        )
        for info, (name, _, _) in zip(inv.blocks, adapter.blocks(model))
    )
    rate = sum(c.flops for c in costs.values()) / sum(c.compute_ms for c in costs.values())
    machine = machine_facts(str(dev))  # after the copies: an idle link may report a lower gen
    return Profile(
        machine=machine,
        device=str(dev),
        model_id=request.model_id,
        workload=request.workload,
        storage_dtype=request.storage,
        compute_dtype=compute,
        bandwidth=bandwidth,
        blocks=blocks,
        non_block_ms=trace.non_block / rate,
        non_block_bytes=inv.non_block_bytes,
        workspace_bytes=workspace,
        is_estimate=False,
        source=_source(machine.gpu_name, dev, any(not c.activation_measured for c in costs.values())),
        tool_version=TOOL_VERSION,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        host_baseline_bytes=baseline,
    )


def _host_baseline(dev) -> int | None:
    """This process's resident memory with torch loaded, the device's context created and the
    kernels a transformer block calls paged in (a matmul, attention, norms, activations): what
    a run holds before any weight (planner.host_peak's baseline). Without the warm-up the
    baseline misses the ~0.25 GB of kernel code the first forward pages in on CPU."""
    import torch

    from runtime.host_rss import rss_bytes

    x = torch.randn(2, 16, 64, device=dev)
    with torch.inference_mode():
        y = torch.nn.functional.layer_norm(x @ x.transpose(1, 2) @ x, (64,))
        y = torch.nn.functional.scaled_dot_product_attention(y[None], y[None], y[None])
        torch.nn.functional.silu(torch.nn.functional.gelu(y, approximate="tanh")).sum().item()
    del x, y
    return rss_bytes()


def _measure_blocks(model, adapter, request: ProfileRequest, dev, compute: DType, trace, progress: Progress):
    """BlockCost for every block name; each distinct shape measured once and reused."""
    from profiler.blocks import measure_block, shape_key

    named = adapter.blocks(model)
    by_shape: dict[tuple, list[str]] = {}
    first: dict[tuple, tuple[str, object]] = {}
    for name, kind, block in named:
        key = shape_key(kind, block)
        by_shape.setdefault(key, []).append(name)
        first.setdefault(key, (kind, block))
    costs = {}
    for n, (key, names) in enumerate(by_shape.items()):
        kind, block = first[key]
        cost = measure_block(
            model, adapter, kind, block, request.workload, request.storage, dev, compute,
            trace.block(names[0]),
        )
        costs.update({name: cost for name in names})
        if progress:
            progress("blocks", n + 1, len(by_shape))
    return costs


def _workspace_bytes(model_meta, adapter, workload: Workload, dev, compute: DType) -> int:
    """Allocator bytes a running model holds besides its weights and a block's activation peak,
    measured the way they are used: the tensors carried from block to block (a block's inputs:
    `measure_block`'s activation peak counts from after they exist) and, on CUDA, the cuBLAS /
    cuBLASLt workspaces the first matmuls on the compute stream allocate through torch's
    allocator. The CUDA context is not in it: it is outside the allocator, and what the card
    keeps outside the allocator is taken off the budget when tuning (`planner.reserve`)."""
    carried = _carried_bytes(model_meta, adapter, workload, compute)
    if dev.type != "cuda":
        return carried
    return carried + _library_workspace_bytes(dev, compute.torch())


def _carried_bytes(model_meta, adapter, workload: Workload, compute: DType) -> int:
    """Bytes of the largest block's inputs at `workload`, built on `meta` (no memory)."""
    import torch

    kinds = dict.fromkeys(kind for _, kind, _ in adapter.blocks(model_meta))
    meta = torch.device("meta")
    sizes = []
    for kind in kinds:
        inputs = adapter.block_inputs(model_meta, kind, workload, meta, compute.torch())
        sizes.append(sum(t.numel() * t.element_size() for t in _tensors(list(inputs.args) + list(inputs.kwargs.values()))))
    return max(sizes, default=0)


def _tensors(values) -> list:
    import torch

    out = []
    for v in values:
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (tuple, list)):
            out.extend(_tensors(v))
    return out


def _library_workspace_bytes(dev, dtype) -> int:
    """What torch's allocator keeps after a matmul and a linear with bias beyond their tensors:
    the cuBLAS and cuBLASLt workspaces of the current stream (32 MiB each on Hopper by default,
    `CUBLAS_WORKSPACE_CONFIG` changes it). Cleared first, so an earlier matmul does not hide it."""
    import torch

    torch.cuda.synchronize(dev)
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    before = torch.cuda.memory_allocated(dev)
    a = torch.ones(256, 256, dtype=dtype, device=dev)
    bias = torch.ones(256, dtype=dtype, device=dev)
    outs = [a @ a, torch.nn.functional.linear(a, a, bias)]
    torch.cuda.synchronize(dev)
    own = sum(t.numel() * t.element_size() for t in [a, bias, *outs])
    held = torch.cuda.memory_allocated(dev) - before - own
    del a, bias, outs
    return max(0, int(held))


def _source(gpu_name: str, dev, activation_estimated: bool) -> str:
    text = f"measured on {gpu_name} ({dev})"
    if dev.type == "cpu":
        text += "; host-to-device is a host memcpy (pinned = pageable on CPU)"
    if activation_estimated:
        text += "; activation bytes estimated by a forward counted on meta (profiler.flops)"
    return text + "; non-block time from non-block FLOPs at the blocks' measured rate"
