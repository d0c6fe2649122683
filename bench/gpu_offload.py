"""Step time under VRAM budgets on CUDA: our plans vs diffusers group offloading vs accelerate
sequential offload vs the physical bound. Cannot run without CUDA (it says so and exits 2).

The FLUX.1-dev transformer (random bf16 weights, same shapes and bytes) at 1024x1024, one
forward per step. For each budget (torch.cuda.set_per_process_memory_fraction):
  ours        a plan: the largest spread of resident blocks that fits the budget after the
              ring (depth 2), the non-block modules and the measured activation peak
  diffusers   enable_group_offload(block_level, 1 block per group, use_stream=True)
  accelerate  cpu_offload (sequential; one forward only, skipped with --skip-accelerate)
  bound       max(compute of a fully resident forward on an H100-class card is not available
              under small budgets, so: the sum of per-block compute measured one block at a
              time, streamed bytes / measured pinned bandwidth)

    python bench/gpu_offload.py [--budgets 8,12,16,24] [--steps 3] [--skip-accelerate]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path


def _sync_ms(fn, device) -> float:
    import torch

    torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000.0


def pinned_bandwidth_gbps(device, nbytes=1 << 30) -> float:
    import torch

    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dev.copy_(host, non_blocking=True)
    ms = statistics.median(_sync_ms(lambda: dev.copy_(host, non_blocking=True), device) for _ in range(5))
    del host, dev
    return nbytes / (ms / 1000.0) / 1e9


def block_compute_ms(model, inputs, device) -> tuple[float, int]:
    """(sum of every block's forward, one at a time on the device, plus embedders; activation
    peak of a block) with the weights brought in one block at a time."""
    import torch

    from runtime.families import get_family
    from runtime.workload import Workload

    adapter = get_family("flux")
    workload = Workload(1024, 1024, text_tokens=512)
    total = 0.0
    act = 0
    for name, kind, block in adapter.blocks(model):
        block.to(device)
        args = adapter.block_inputs(model, kind, workload, device, torch.bfloat16)
        with torch.no_grad():
            block(*args.args, **args.kwargs)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            total += _sync_ms(lambda: block(*args.args, **args.kwargs), device)
            act = max(act, torch.cuda.max_memory_allocated(device) - before)
        block.to("cpu")
        del args
    return total, act


def plan_for_budget(inv, budget: int, activation: int, workspace=1 << 30):
    """Spread resident blocks evenly while they fit; the rest streamed through a depth-2 ring."""
    from runtime.inventory import device_bytes_by_dtype
    from runtime.plan import Target, build_plan
    from runtime.schedule import ring_bytes, ring_of
    from runtime.workload import Workload

    names = [b.name for b in inv.blocks]
    n = len(names)
    best = set(names)
    for resident_count in range(n + 1):
        step = n / resident_count if resident_count else 0
        resident = {names[int(i * step)] for i in range(resident_count)} if resident_count else set()
        streamed = [nm not in resident for nm in names]
        groups = [device_bytes_by_dtype(b, True) for b, s in zip(inv.blocks, streamed) if s]
        ring = ring_bytes(ring_of(streamed, 2), groups) if groups else 0
        weights = inv.non_block_bytes + sum(b.bytes for b in inv.blocks if b.name in resident)
        if weights + ring + activation + workspace > budget:
            break
        best = {nm for nm, s in zip(names, streamed) if s}
    return build_plan(inv, best, workload=Workload(1024, 1024, text_tokens=512),
                      target=Target("bench", budget), prefetch_depth=2)


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="8,12,16,24", help="GiB, comma-separated")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-accelerate", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_offload.py needs a CUDA device; none here. Run it on a machine with a GPU.")
        return 2

    import diffusers

    from runtime.apply import apply_plan
    from runtime.dtypes import DType
    from runtime.families import get_family
    from runtime.inventory import inventory_of_module
    from runtime.random_weights import random_model
    from runtime.workload import Workload

    device = torch.device("cuda", torch.cuda.current_device())
    total_mem = torch.cuda.get_device_properties(device).total_memory
    model = random_model("flux-dev", DType.BF16, fill_device="cuda")  # drawn on the GPU, kept on the host
    adapter = get_family("flux")
    inv = inventory_of_module(model, adapter, "flux-dev", DType.BF16)
    workload = Workload(1024, 1024, text_tokens=512)
    inputs = adapter.model_inputs(model, workload, device, torch.bfloat16)
    bandwidth = pinned_bandwidth_gbps(device)
    compute_ms, activation = block_compute_ms(model, inputs, device)
    print(f"pinned H2D {bandwidth:.1f} GB/s; block compute {compute_ms:.0f} ms/forward; "
          f"block activation peak {activation / 2**30:.2f} GiB")
    rows = []
    for gib in [float(x) for x in args.budgets.split(",")]:
        budget = int(gib * 2**30)
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total_mem), device)
        row = {"budget_gib": gib}
        plan = plan_for_budget(inv, budget, activation)
        streamed_bytes = sum(b.bytes for b in plan.streamed)
        row["streamed_blocks"] = len(plan.streamed)
        row["bound_ms"] = max(compute_ms, streamed_bytes / (bandwidth * 1e9) * 1000.0)
        row["ours_ms"] = _time_ours(model, plan, inputs, device, args.steps, apply_plan)
        row["diffusers_ms"] = _time_diffusers(model, inputs, device, args.steps)
        row["accelerate_ms"] = None if args.skip_accelerate else _time_accelerate(model, inputs, device)
        for key in ("ours_ms", "diffusers_ms", "accelerate_ms"):
            if row[key] is not None:
                row[key.replace("_ms", "_over_bound")] = row[key] / row["bound_ms"]
        print(json.dumps(row))
        rows.append(row)
    torch.cuda.set_per_process_memory_fraction(1.0, device)
    result = {
        "benchmark": "gpu_offload", "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "pinned_gbps": bandwidth, "block_compute_ms": compute_ms,
        "activation_bytes": activation, "rows": rows,
    }
    name = torch.cuda.get_device_name(device).replace(" ", "_").lower()
    out = Path(__file__).resolve().parent / "results" / f"gpu_offload_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _measure(model, inputs, device, steps: int) -> float | None:
    import torch

    try:
        with torch.no_grad():
            model(**inputs)  # warm-up
            times = [_sync_ms(lambda: model(**inputs), device) for _ in range(steps)]
        return statistics.median(times)
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def _time_ours(model, plan, inputs, device, steps, apply_plan) -> float | None:
    try:
        handle = apply_plan(model, plan, device)
    except Exception as e:  # an OOM while placing weights: the budget is too small
        print(f"ours: not applied ({type(e).__name__}: {e})")
        return None
    try:
        return _measure(model, inputs, device, steps)
    finally:
        handle.remove()


def _time_diffusers(model, inputs, device, steps) -> float | None:
    model.enable_group_offload(
        onload_device=device, offload_device=torch_cpu(), offload_type="block_level",
        num_blocks_per_group=1, use_stream=True,
    )
    try:
        return _measure(model, inputs, device, steps)
    finally:
        for module in model.modules():  # take the hooks off and the weights back to the CPU
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None:
                for name in list(registry.hooks):
                    registry.remove_hook(name, recurse=False)
                del module._diffusers_hook
        model.to("cpu")


def _time_accelerate(model, inputs, device) -> float | None:
    from accelerate import cpu_offload
    from accelerate.hooks import remove_hook_from_submodules

    cpu_offload(model, execution_device=device)
    try:
        return _measure(model, inputs, device, 1)  # very slow: one forward
    finally:
        remove_hook_from_submodules(model)
        model.to("cpu")


def torch_cpu():
    import torch

    return torch.device("cpu")


if __name__ == "__main__":
    raise SystemExit(main())
