"""Where offload is free and where it costs: FLUX.1-dev per step on every reference GPU.

For each resolution: the FLOPs of one step (all blocks + non-block modules), then per GPU the
compute-bound time (FLOPs at the reference profile's sustained rate) and the transfer-bound
time (bytes that cannot stay resident, over the pinned-under-compute bandwidth). Resident room
= card memory - non-block modules - activation peak - workspace - 2 ring slots of the largest
block (prefetch depth 2, needed only when something streams). Whichever time is larger bounds
the step (DESIGN.md: T_step >= max(compute, transfer)). Estimates from spec sheets, no GPU.

    python bench/reference_table.py [--dtype bf16] [-o bench/results/reference_table.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys

MODEL = "flux-dev"
RESOLUTIONS = (512, 1024)
RING_DEPTH = 2


def row(gpu, workload, storage):
    from profiler.reference import reference_profile

    p = reference_profile(gpu.id, MODEL, workload, storage)
    steps = workload.forwards_per_step
    largest = max(b.bytes for b in p.blocks)
    block_bytes = sum(b.bytes for b in p.blocks)
    fixed = p.non_block_bytes + p.activation_peak_bytes + p.workspace_bytes
    room = gpu.memory_bytes - fixed
    streamed = 0 if block_bytes <= room else max(0, block_bytes - (room - RING_DEPTH * largest))
    cast_ms = sum(b.cast_ms for b in p.blocks) * streamed / block_bytes  # fp8: streamed share
    compute_ms = (p.compute_ms + cast_ms) * steps
    transfer_ms = streamed / (p.bandwidth.pinned_under_compute_gbps * 1e9) * 1e3 * steps
    if room < RING_DEPTH * largest and streamed:
        verdict = "does not fit"
    elif not streamed:
        verdict = "fits: no offload"
    else:
        verdict = "compute-bound: offload free" if compute_ms >= transfer_ms else "transfer-bound: offload costs"
    return {
        "gpu": gpu.id,
        "memory_gib": round(gpu.memory_bytes / 2**30, 1),
        "pcie": f"gen{gpu.pcie_gen} x{gpu.pcie_lanes}",
        "bf16_dense_tflops": gpu.bf16_dense_tflops,
        "sustained_tflops": round(_flops(workload) / p.compute_ms / 1e9, 1),
        "bandwidth_under_compute_gbps": round(p.bandwidth.pinned_under_compute_gbps, 2),
        "streamed_gb": round(streamed / 1e9, 2),
        "compute_ms_per_step": round(compute_ms, 1),
        "transfer_ms_per_step": round(transfer_ms, 1),
        "step_lower_bound_ms": round(max(compute_ms, transfer_ms), 1),
        "dominates": verdict,
    }


def _flops(workload) -> int:
    from profiler.flops import model_trace

    return model_trace(MODEL, workload).total


def table(storage) -> list[dict]:
    from profiler.reference import reference_gpus
    from runtime.catalog import get_model
    from runtime.workload import Workload

    text = get_model(MODEL).text_tokens
    out = []
    for side in RESOLUTIONS:
        workload = Workload(height=side, width=side, text_tokens=text)
        flops = _flops(workload) * workload.forwards_per_step
        out.append({
            "resolution": workload.resolution,
            "text_tokens": text,
            "tflop_per_step": round(flops / 1e12, 2),
            "gpus": [row(gpu, workload, storage) for gpu in reference_gpus()],
        })
    return out


def _print(results: list[dict], storage) -> None:
    cols = ["gpu", "memory_gib", "pcie", "sustained_tflops", "bandwidth_under_compute_gbps",
            "streamed_gb", "compute_ms_per_step", "transfer_ms_per_step", "dominates"]
    for block in results:
        print(f"\n{MODEL} {block['resolution']} {storage.value}: {block['tflop_per_step']} TFLOP/step")
        print("  ".join(f"{c[:18]:>18}" for c in cols))
        for r in block["gpus"]:
            print("  ".join(f"{str(r[c])[:30]:>18}" for c in cols))


def main(argv=None) -> None:
    import diffusers
    import torch

    from runtime.dtypes import DType
    from runtime.version import TOOL_VERSION

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bf16", help="storage dtype (bf16, fp8)")
    parser.add_argument("-o", "--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    storage = DType.parse(args.dtype)
    results = table(storage)
    _print(results, storage)
    if args.output:
        record = {
            "benchmark": "reference_table",
            "device": "none (estimates)",
            "command": " ".join(["python", "bench/reference_table.py", *(argv or sys.argv[1:])]),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": {"offload-planner": TOOL_VERSION, "torch": torch.__version__,
                         "diffusers": diffusers.__version__, "python": platform.python_version()},
            "model": MODEL,
            "storage_dtype": storage.value,
            "assumptions": "profiler/reference.py: compute at 0.5 (GeForce) / 0.6 (data center) / "
                           "0.4 (L4) of dense bf16 peak; pinned under compute = 0.75 x PCIe link; "
                           "workspace 768 MiB; activation 12 x tokens x hidden x 2 B; ring depth 2",
            "results": results,
        }
        with open(args.output, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
