"""Runtime overhead on CPU: a fully resident plan vs the plain model, same weights, same inputs.

A mid-size FLUX (4 double + 8 single blocks, 8 heads x 64) at a token count scaled so one
forward takes ~100-300 ms on CPU. Runs are interleaved (plain, resident, streamed, plain, ...)
and the medians compared; the target is under 2% for the resident plan. The all-streamed
plan's ratio is printed for information (on CPU its copies are synchronous memcpys).

    python bench/runtime_overhead.py [--runs 15] [--tokens 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

CONFIG = {
    "patch_size": 1, "in_channels": 64, "num_layers": 4, "num_single_layers": 8,
    "attention_head_dim": 64, "num_attention_heads": 8, "joint_attention_dim": 512,
    "pooled_projection_dim": 256, "guidance_embeds": True, "axes_dims_rope": (8, 28, 28),
}


def mid_flux_inputs(tokens: int, text: int) -> dict:
    """Seeded random inputs of one forward of the `CONFIG` FLUX."""
    import torch

    g = torch.Generator().manual_seed(0)
    return dict(
        hidden_states=torch.randn(1, tokens, 64, generator=g),
        encoder_hidden_states=torch.randn(1, text, 512, generator=g),
        pooled_projections=torch.randn(1, 256, generator=g),
        timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
        img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(text, 3),
    )


def main() -> None:
    import diffusers
    import torch

    from runtime.apply import apply_plan
    from runtime.dtypes import DType
    from runtime.families import get_family
    from runtime.inventory import inventory_of_module
    from runtime.plan import Target, build_plan
    from runtime.workload import Workload

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=64, help="image tokens per forward")
    parser.add_argument("--text", type=int, default=32, help="text tokens per forward")
    args = parser.parse_args()

    adapter = get_family("flux")
    models = {}
    for name in ("plain", "resident", "streamed"):
        torch.manual_seed(0)
        models[name] = adapter.build(CONFIG, device="cpu")
    inv = inventory_of_module(models["plain"], adapter, "bench-flux", DType.FP32)
    workload = Workload(256, 256, text_tokens=args.text)
    target = Target("cpu", 1 << 40)
    handles = {
        "resident": apply_plan(models["resident"], build_plan(inv, set(), workload=workload, target=target), "cpu"),
        "streamed": apply_plan(
            models["streamed"],
            build_plan(inv, {b.name for b in inv.blocks}, workload=workload, target=target, prefetch_depth=2),
            "cpu",
        ),
    }
    inputs = mid_flux_inputs(args.tokens, args.text)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        reference = models["plain"](**inputs).sample
        for name in ("resident", "streamed"):  # warm-up, and the outputs must agree
            assert torch.equal(models[name](**inputs).sample, reference), name
        for _ in range(args.runs):
            for name, model in models.items():
                start = time.perf_counter()
                model(**inputs)
                times[name].append((time.perf_counter() - start) * 1000.0)
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratios = {name: medians[name] / medians["plain"] for name in ("resident", "streamed")}
    mins = {name: min(t) for name, t in times.items()}
    min_ratios = {name: mins[name] / mins["plain"] for name in ("resident", "streamed")}
    for name in models:
        print(f"{name:9s} median {medians[name]:8.2f} ms/forward  "
              f"(min {min(times[name]):.2f}, max {max(times[name]):.2f}, n={args.runs})")
    print(f"resident / plain = {ratios['resident']:.4f}  "
          f"(overhead {100 * (ratios['resident'] - 1):+.2f}%, target < +2%)")
    print(f"streamed / plain = {ratios['streamed']:.4f}  (information: synchronous copies on CPU)")
    print(f"by minimum (less sensitive to a loaded machine): resident {min_ratios['resident']:.4f}, "
          f"streamed {min_ratios['streamed']:.4f}")
    stats = handles["streamed"].stats
    result = {
        "benchmark": "runtime_overhead",
        "device": "cpu", "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in CONFIG.items()},
        "image_tokens": args.tokens, "text_tokens": args.text, "runs": args.runs,
        "median_ms": medians, "ratio_to_plain": ratios,
        "min_ms": mins, "min_ratio_to_plain": min_ratios,
        "all_ms": times,
        "streamed_stats": stats.to_dict(),
        "model_bytes": inv.total_bytes,
    }
    out = Path(__file__).resolve().parent / "results" / "runtime_overhead_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    for handle in handles.values():
        handle.remove()


if __name__ == "__main__":
    main()
