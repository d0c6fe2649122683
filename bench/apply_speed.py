"""How long `apply_plan` and `handle.remove()` take, next to one plain copy of the same bytes.

A random-weight catalog model (default `wan2.1-t2v-1.3b`, 2.84 GB in bf16; the fp8 cases use
flux-dev's blocks, 2 double and 4 single) is applied under a few placements (everything
streamed, every other block streamed, fp8 storage cast on the host or on the device) and
removed again, each `--repeats` times, interleaved with the references: every tensor apply
copies on the host (the streamed ones, and those cast to another dtype) copied one by one into
fresh memory in the dtype apply gives it, and back into fresh memory in its own dtype: what
packing and restoring must at least do (fault new pages in, copy, cast); the same copy into
memory already touched ("warm") is the memcpy alone. On CUDA the resident blocks' bytes are
also timed as one pinned host-to-device copy. After the last `remove()` every tensor is checked: its own
storage, its dtype and device, bitwise equal to the weights before.

    OMP_NUM_THREADS=2 python bench/apply_speed.py [--device cpu] [--repeats 3] [-o PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

SCENARIOS = {  # name: (storage, cast, which blocks are streamed)
    "bf16-all-streamed": ("bf16", "pre", "all"),
    "bf16-every-other-streamed": ("bf16", "pre", "every-other"),
    "fp8-every-other-streamed-pre": ("fp8", "pre", "every-other"),
    "fp8-every-other-streamed-auto": ("fp8", "auto", "every-other"),
}


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _conversions(model, plan) -> list[tuple]:
    """(tensor, dtype) for every tensor `apply` must copy on the host: the streamed blocks'
    (into their packs) and those it casts (fp8 cast on the host, non-block modules to the
    compute dtype); on CUDA every tensor also crosses to the device, timed apart."""
    from runtime.engine.packing import device_dtype, unique_tensors
    from runtime.plan import CastMode, Placement

    compute = plan.model.compute_dtype.torch()
    out, in_blocks = [], set()
    for block in plan.blocks:
        tensors = unique_tensors(model.get_submodule(block.name))
        in_blocks.update(id(t) for t in tensors)
        for t in tensors:
            dtype = device_dtype(t.dtype, block.cast is CastMode.PRE, compute)
            if block.placement is Placement.STREAMED or dtype != t.dtype:
                out.append((t, dtype))
    for t in unique_tensors(model):
        dtype = device_dtype(t.dtype, True, compute)
        if id(t) not in in_blocks and dtype != t.dtype:
            out.append((t, dtype))
    return out


def _copy_times(conversions, resident_bytes: int, device) -> dict[str, float]:
    """The references: those tensors copied one by one into fresh memory in the dtype apply
    gives them (page faults, copy and cast: what packing must at least do), back again into
    fresh memory in their own dtype (what restoring must at least do), and the first copy again
    into memory already touched ("warm": the memcpy and cast alone); on CUDA a pinned
    host-to-device copy of the resident bytes."""
    import torch

    cpu = torch.device("cpu")
    out = {}
    if conversions:
        held: dict = {}
        out["host_convert_s"] = _timed(lambda: held.setdefault(
            "there", [t.data.to(dtype=d, copy=True) for t, d in conversions]), cpu)
        out["host_convert_back_s"] = _timed(lambda: held.setdefault(
            "back", [c.to(dtype=t.dtype, copy=True) for (t, _), c in zip(conversions,
                                                                          held["there"])]), cpu)
        out["host_copy_warm_s"] = _timed(
            lambda: [c.copy_(t.data) for (t, _), c in zip(conversions, held["there"])], cpu)
        held.clear()
    if device.type == "cuda" and resident_bytes:
        pinned = torch.empty(resident_bytes, dtype=torch.uint8, pin_memory=True)
        on_device = torch.empty(resident_bytes, dtype=torch.uint8, device=device)
        on_device.copy_(pinned, non_blocking=True)
        out["h2d_pinned_s"] = _timed(lambda: on_device.copy_(pinned, non_blocking=True), device)
        del pinned, on_device
    return out


def _digest(model) -> dict[str, tuple]:
    """Each tensor's device, dtype and a hash of its bytes (bitwise identity, cheaply)."""
    import hashlib

    import torch

    out = {}
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        data = tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy()
        out[name] = (tensor.device, tensor.dtype, hashlib.blake2b(data).hexdigest())
    return out


def _flux_shaped(storage):
    """flux-dev's blocks (680 MB double, 283 MB single in bf16), 2 double and 4 single."""
    import torch

    from runtime.catalog import get_model
    from runtime.dtypes import DType
    from runtime.families import get_family
    from runtime.random_weights import fill_random_, to_storage_

    config = {**get_model("flux-dev").config, "num_layers": 2, "num_single_layers": 4}
    model = torch.nn.Module.to(get_family("flux").build(config, device="meta"), torch.bfloat16)
    torch.manual_seed(0)
    model = model.to_empty(device="cpu")
    fill_random_(model)
    to_storage_(model, DType(storage))
    return model.eval()


def _plan(model, model_id, storage, cast, which):
    from runtime.dtypes import DType
    from runtime.families import family_of_module
    from runtime.inventory import inventory_of_module
    from runtime.plan import CastMode, Target, build_plan
    from runtime.workload import Workload

    inv = inventory_of_module(model, family_of_module(model), model_id, DType(storage))
    names = [b.name for b in inv.blocks]
    streamed = set(names if which == "all" else names[::2])
    plan = build_plan(inv, streamed, workload=Workload(256, 256, text_tokens=64),
                      target=Target("bench", 1 << 40), cast=CastMode(cast))
    return plan


def _run_scenario(name, model, model_id, storage, cast, which, device, repeats) -> dict:
    from runtime.apply import apply_plan

    plan = _plan(model, model_id, storage, cast, which)
    conversions = _conversions(model, plan)
    before = _digest(model)
    rounds = []
    for _ in range(repeats):
        refs = _copy_times(conversions, 0, device)
        holder = {}
        apply_s = _timed(lambda: holder.setdefault("h", apply_plan(model, plan, device)), device)
        stats = holder["h"].stats
        remove_s = _timed(holder["h"].remove, device)
        if device.type == "cuda":
            refs.update(_copy_times([], stats.resident_bytes + stats.non_block_bytes, device))
        rounds.append({"apply_s": apply_s, "remove_s": remove_s, **refs})
    params = list(model.named_parameters())
    storages = {p.untyped_storage().data_ptr() for _, p in params}
    exact = _digest(model) == before
    med = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    packed = stats.pinned_bytes + stats.pageable_bytes
    result = {
        "storage": storage, "cast": cast, "streamed": which,
        "streamed_blocks": stats.streamed_blocks, "resident_blocks": stats.resident_blocks,
        "packed_bytes": packed, "pinned_bytes": stats.pinned_bytes,
        "resident_bytes": stats.resident_bytes + stats.non_block_bytes,
        "median": med,
        "apply_over_host_copy": med["apply_s"] / med["host_convert_s"],
        "remove_over_host_copy": med["remove_s"] / med["host_convert_back_s"],
        "rounds": rounds,
        "bitwise_equal_after_remove": exact,
        "own_storage_after_remove": len(storages) == len(params),
    }
    print(f"{name:30s} packed {packed / 2**30:5.2f} GiB  apply {med['apply_s']:6.3f} s  "
          f"remove {med['remove_s']:6.3f} s | host copy {med['host_convert_s']:6.3f} s, "
          f"back {med['host_convert_back_s']:6.3f} s, warm {med['host_copy_warm_s']:6.3f} s"
          f"  (apply/copy {result['apply_over_host_copy']:.2f}, "
          f"remove/back {result['remove_over_host_copy']:.2f})  "
          f"exact {exact and result['own_storage_after_remove']}", flush=True)
    return result


def main() -> None:
    import torch

    from runtime.dtypes import DType
    from runtime.random_weights import random_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wan2.1-t2v-1.3b", help="catalog model (bf16 cases)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    results, models = {}, {}
    for name in args.scenarios.split(","):
        storage, cast, which = SCENARIOS[name]
        if storage not in models:
            models.clear()  # one model in host RAM at a time
            start = time.perf_counter()
            if storage == "bf16":
                fill = "cuda" if device.type == "cuda" else None
                models[storage] = (args.model, random_model(args.model, DType(storage),
                                                            fill_device=fill))
            else:  # fp8 needs a family whose buffers the fp8 checks accept: flux's shape
                models[storage] = ("flux-dev-2x4", _flux_shaped(storage))
            print(f"built {models[storage][0]} ({storage}) in {time.perf_counter() - start:.1f} s",
                  flush=True)
        model_id, model = models[storage]
        results[name] = {"model": model_id, **_run_scenario(
            name, model, model_id, storage, cast, which, device, args.repeats)}
    result = {
        "benchmark": "apply_speed",
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__, "python": platform.python_version(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "repeats": args.repeats,
        "scenarios": results,
    }
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
