"""The disk tier on this machine (CPU): read bandwidth, staging overlap, predicted vs measured step.

1. `profiler.disk.measure_disk`: cold sequential O_DIRECT reads of the pack directory's disk,
   block-sized, idle and while host copies run.
2. A FLUX-shaped model (fp32, random weights, one double and four single blocks at width
   1024) streams every block, some from the disk tier. Its CPU profile is measured here (each
   block's forward timed resident, the copy bandwidth by `profiler.bandwidth`, the disk as in 1),
   the cost model predicts the step of the plan, and the plan's forwards are timed.
3. Staging overlap: the reader thread's busy time against the step: the share of the disk
   reads the forward did not wait for.

    python bench/disk_tier.py [--runs 5] [--disk 2] [--resolution 128]
Writes bench/results/disk_tier_cpu.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

CONFIG = dict(
    patch_size=1, in_channels=64, num_layers=1, num_single_layers=4, attention_head_dim=128,
    num_attention_heads=8, joint_attention_dim=256, pooled_projection_dim=256,
    guidance_embeds=False, axes_dims_rope=(16, 56, 56),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--disk", type=int, default=2, help="streamed blocks on the disk tier")
    parser.add_argument("--resolution", type=int, default=128)
    args = parser.parse_args()

    import torch

    from planner.costmodel import CostModel, Layout
    from profiler.bandwidth import copy_sizes, measure_bandwidth
    from profiler.disk import measure_disk
    from runtime.dtypes import DType
    from runtime.families import get_family
    from runtime.inventory import inventory_of_module
    from runtime.plan import CastMode, HostMemory, Target, Tier, build_plan
    from runtime.random_weights import fill_random_
    from runtime.workload import Workload

    torch.set_num_threads(1)
    adapter = get_family("flux")
    model = adapter.build(CONFIG).to_empty(device="cpu").eval()
    fill_random_(model)
    inv = inventory_of_module(model, adapter, "bench-disk-flux", DType.FP32)
    workload = Workload(args.resolution, args.resolution, text_tokens=8)
    inputs = adapter.model_inputs(model, workload, "cpu", torch.float32)
    names = [b.name for b in inv.blocks]
    largest = max(b.bytes for b in inv.blocks)

    disk = measure_disk(torch.device("cpu"), largest)
    bandwidth = dataclasses.replace(
        measure_bandwidth(torch.device("cpu"), copy_sizes(largest)),
        disk_read_gbps=disk.read_gbps, disk_read_under_copy_gbps=disk.read_under_copy_gbps)
    block_ms, non_block_ms = _block_times(model, adapter, inputs, args.runs)
    profile = _profile(inv, workload, bandwidth, block_ms, non_block_ms)

    on_disk = set(names[1::max(1, len(names) // args.disk)][: args.disk])  # spread through the stream
    plan = build_plan(inv, set(names), workload=workload, target=Target("cpu", 1 << 40), prefetch_depth=2,
                      host_memory=HostMemory.PAGEABLE, on_disk=on_disk)
    layout = Layout.uniform([True] * len(names), CastMode.PRE, 2, HostMemory.PAGEABLE)
    model_ = CostModel(inv, profile)
    predicted = model_.step_ms(dataclasses.replace(layout, on_disk=tuple(n in on_disk for n in names)))
    predicted_ram = model_.step_ms(layout)

    ram_plan = dataclasses.replace(plan, blocks=tuple(dataclasses.replace(b, tier=Tier.RAM) for b in plan.blocks))
    measured_ram, _, _, _ = _timed(model, ram_plan, inputs, args.runs)
    measured, read_ms, stats, steps = _timed(model, plan, inputs, args.runs)
    compute_ms = sum(block_ms) + non_block_ms
    # the forward waited for the disk this long beyond the same placement in RAM
    waited = max(0.0, measured - measured_ram)
    result = {
        "benchmark": "disk_tier",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread)",
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "disk": dataclasses.asdict(disk),
        "model": {"blocks": len(names), "weight_bytes": inv.total_bytes, "largest_block_bytes": largest,
                  "resolution": args.resolution},
        "plan": {"streamed": len(names), "on_disk": sorted(on_disk), "disk_bytes": stats.disk_bytes,
                 "staging_bytes": stats.staging_bytes, "direct_io": stats.direct_io, "depth": 2},
        "compute_ms": compute_ms,
        "predicted_step_ms": predicted,
        "predicted_step_ms_all_in_ram": predicted_ram,
        "measured_step_ms": measured,
        "measured_step_ms_all_in_ram": measured_ram,
        "measured_step_ms_runs": steps,
        "error": (measured - predicted) / predicted,
        "reader_busy_ms": read_ms,
        "staging_overlap": 1.0 - min(1.0, waited / read_ms) if read_ms > 0 else None,
    }
    out = Path(__file__).parent / "results" / "disk_tier_cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("predicted_step_ms", "measured_step_ms", "error",
                                             "predicted_step_ms_all_in_ram", "measured_step_ms_all_in_ram",
                                             "reader_busy_ms", "staging_overlap")}, indent=2))
    print(f"disk: {disk.read_gbps:.2f} GB/s cold direct reads, {disk.read_under_copy_gbps:.2f} GB/s under copies")


def _timed(model, plan, inputs, runs: int):
    """(median ms of a forward, median ms the reader was busy in one, stats, every run)."""
    import torch

    from runtime.apply import apply_plan

    handle = apply_plan(model, plan, "cpu")
    reader = handle._state.ring.disk
    steps, busy = [], []
    with torch.inference_mode():
        model(**inputs)  # warm-up: the ring (and the reader) start
        for _ in range(runs):
            read_before = reader.read_s if reader else 0.0
            start = time.perf_counter()
            model(**inputs)
            steps.append((time.perf_counter() - start) * 1000)
            busy.append(((reader.read_s if reader else 0.0) - read_before) * 1000)
    stats = handle.stats
    handle.remove()
    return statistics.median(steps), statistics.median(busy), stats, steps


def _block_times(model, adapter, inputs, runs: int) -> tuple[list[float], float]:
    """Median ms of each block's forward and of the rest of one forward, all resident."""
    import torch

    blocks = [m for _, _, m in adapter.blocks(model)]
    times: dict[int, list[float]] = {i: [] for i in range(len(blocks))}
    totals = []
    starts: dict[int, float] = {}
    hooks = []
    for i, block in enumerate(blocks):
        hooks.append(block.register_forward_pre_hook(lambda m, a, i=i: starts.__setitem__(i, time.perf_counter())))
        hooks.append(block.register_forward_hook(
            lambda m, a, o, i=i: times[i].append((time.perf_counter() - starts[i]) * 1000)))
    with torch.inference_mode():
        model(**inputs)
        for t in times.values():
            t.clear()
        for _ in range(runs):
            start = time.perf_counter()
            model(**inputs)
            totals.append((time.perf_counter() - start) * 1000)
    for h in hooks:
        h.remove()
    block_ms = [statistics.median(times[i]) for i in range(len(blocks))]
    return block_ms, max(0.0, statistics.median(totals) - sum(block_ms))


def _profile(inv, workload, bandwidth, block_ms, non_block_ms):
    import torch

    from profiler.machine import machine_facts
    from profiler.types import BlockProfile, Profile

    blocks = tuple(BlockProfile(b.name, b.kind, b.index, b.bytes, ms, 0.0, 0)
                   for b, ms in zip(inv.blocks, block_ms))
    return Profile(
        machine=machine_facts("cpu"), device="cpu", model_id=inv.model_id, workload=workload,
        storage_dtype=inv.storage_dtype, compute_dtype=inv.storage_dtype, bandwidth=bandwidth, blocks=blocks,
        non_block_ms=non_block_ms, non_block_bytes=inv.non_block_bytes, workspace_bytes=0, is_estimate=False,
        source="measured on cpu by bench/disk_tier.py", tool_version=torch.__version__,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


if __name__ == "__main__":
    main()
