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

CUDA_SLACK_BYTES = 256 * 2**20  # cuBLAS workspaces and allocator slack beyond the context


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
    from profiler.flops import meta_model, model_trace
    from profiler.machine import machine_facts
    from runtime.inventory import inventory_of_module
    from runtime.version import TOOL_VERSION

    compute = compute_dtype(request.storage)
    model, adapter = meta_model(request.model_id, compute)
    inv = inventory_of_module(model, adapter, request.model_id, request.storage)
    trace = model_trace(request.model_id, request.workload, compute)
    workspace = _workspace_bytes(dev)
    bandwidth = measure_bandwidth(dev, copy_sizes(max(b.bytes for b in inv.blocks)), progress)
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
    )


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


def _workspace_bytes(dev) -> int:
    """Device memory the process holds outside torch's allocator (CUDA context, other
    processes) plus slack for cuBLAS workspaces; 0 on CPU, where there is no context."""
    import torch

    if dev.type != "cuda":
        return 0
    torch.zeros(1, device=dev)  # create the context
    torch.cuda.synchronize(dev)
    free, total = torch.cuda.mem_get_info(dev)
    outside = total - free - torch.cuda.memory_reserved(dev)
    return int(max(outside, 0) + CUDA_SLACK_BYTES)


def _source(gpu_name: str, dev, activation_estimated: bool) -> str:
    text = f"measured on {gpu_name} ({dev})"
    if dev.type == "cpu":
        text += "; host-to-device is a host memcpy (pinned = pageable on CPU)"
    if activation_estimated:
        text += "; activation bytes estimated by a forward counted on meta (profiler.flops)"
    return text + "; non-block time from non-block FLOPs at the blocks' measured rate"
