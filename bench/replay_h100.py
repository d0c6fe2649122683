"""Replay the H100 evidence through the cost model; read stream order and latencies from traces.

For every recorded run (four plans, the depth sweeps): the prediction the plan carried (the
steady, denoising-loop time), the prediction for a forward between two device synchronisations
(how the runs were timed) without and with the cost model's overheads (`Overheads`: event-wait
latency, host launch time per block, a synchronised forward's host head start), the measured
time and the errors. From the torch.profiler traces, when the evidence folder is there: per
streamed block, how long compute waited for its copy, how long a copy waited after its slot's
compute event or after the copy before it, the CPU cost of issuing a copy, the kernel time per
forward, and the figures the overheads are taken from.

The sweep (`sweep`): the same four placements at depth 1-4 with the per-block compute scaled
to 512x512 and 768x768 by the blocks' FLOPs (`profiler.flops`; the 1024x1024 FLOP rate, so small
GEMMs' lower efficiency is not in it), the copy-bound regime the 1024x1024 runs barely reach:
what each overhead adds there. Measuring it needs a GPU (bench/gpu_session.sh, SWEEP=1).

    python bench/replay_h100.py [--evidence ../shared/gpu-evidence/h100-2026-11-22]

Writes bench/results/replay_h100.json.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import gzip
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "h100"


def replay() -> list[dict]:
    from planner.costmodel import NO_OVERHEADS, CostModel
    from planner.explain import layout_of
    from profiler.profile_json import load_profile_json
    from runtime.inventory import inventory
    from runtime.plan import load_plan

    inv = inventory("flux-dev")
    model = CostModel(inv, load_profile_json(DATA / "profile_flux-dev_1024_bf16.json"))
    bare = CostModel(inv, model.profile, NO_OVERHEADS)
    measured = json.loads((DATA / "measured.json").read_text())
    cases = [(r["plan"], "tuned", r["depth"], r["ms"]) for r in measured["plans"]]
    cases += [
        (s["plan"], f"depth sweep {s['run']}", int(d), ms)
        for s in measured["depth_sweeps"] for d, ms in s["ms_by_depth"].items()
    ]
    rows = []
    for name, run, depth, ms in cases:
        plan = load_plan(DATA / name)
        layout = dataclasses.replace(layout_of(plan, inv), depth=depth)
        steady = bare.step_ms(layout)
        before = bare.synchronized_step_ms(layout)
        after = model.synchronized_step_ms(layout)
        rows.append({
            "plan": name, "run": run, "depth": depth, "measured_ms": ms,
            "predicted_steady_ms": round(steady, 2), "error_steady": round(steady / ms - 1, 4),
            "predicted_before_ms": round(before, 2), "error_before": round(before / ms - 1, 4),
            "predicted_after_ms": round(after, 2), "error_after": round(after / ms - 1, 4),
        })
    return rows


HOPPER_CUBLAS_WORKSPACE = 32 * 2**20  # torch's default on sm90; not measured on that machine


def peaks_and_retune() -> tuple[list[dict], list[dict]]:
    """Peaks of the recorded plans with the workspace measured as profiler.run does now, and
    the plans `tune` would make again from that profile at the same budgets."""
    from planner.costmodel import CostModel
    from planner.explain import layout_of
    from planner.search import Settings, search
    from planner.space import space_of
    from profiler.flops import meta_model
    from profiler.profile_json import load_profile_json
    from profiler.run import _carried_bytes
    from runtime.inventory import inventory
    from runtime.plan import load_plan
    from runtime.workload import CfgMode

    inv = inventory("flux-dev")
    profile = load_profile_json(DATA / "profile_flux-dev_1024_bf16.json")
    meta, adapter = meta_model("flux-dev")
    workspace = _carried_bytes(meta, adapter, profile.workload, profile.compute_dtype) + HOPPER_CUBLAS_WORKSPACE
    profile = dataclasses.replace(profile, workspace_bytes=workspace)
    model = CostModel(inv, profile)
    measured = json.loads((DATA / "measured.json").read_text())
    peaks, tuned = [], []
    for r in measured["plans"]:
        plan = load_plan(DATA / r["plan"])
        layout = layout_of(plan, inv)
        new = model.peak_bytes(layout)
        peaks.append({
            "plan": r["plan"], "measured_peak_alloc": r["peak_alloc"], "measured_peak_reserved": r["peak_reserved"],
            "predicted_before": plan.predictions.peak_vram_bytes,
            "error_before": round(plan.predictions.peak_vram_bytes / r["peak_alloc"] - 1, 4),
            "predicted_after": new, "error_after": round(new / r["peak_alloc"] - 1, 4),
        })
        budget = plan.target.vram_budget_bytes
        best = search(inv, {CfgMode.NONE: profile}, Settings(budget, trials=40)).best
        streamed = space_of(inv).layout(best.candidate)
        tuned.append({
            "budget_gib": r["budget_gib"], "recorded_streamed": sum(layout.streamed),
            "streamed": sum(streamed.streamed), "depth": best.candidate.depth,
            "peak_vram_bytes": best.peak_vram_bytes, "usable_bytes": model.usable_bytes(budget),
            "steady_ms": round(best.step_ms, 2),
            "synchronized_ms": round(model.synchronized_step_ms(streamed), 2),
            "floor_ms": round(model.lower_bound_ms(budget), 2),
            "ratio_to_floor": round(best.step_ms / model.lower_bound_ms(budget), 4),
            "recorded_plan_steady_ms": round(model.step_ms(layout), 2),
        })
    return peaks, tuned


def trace_facts(path: Path) -> dict:
    """Waits and latencies of one traced forward (ms and us; absolute times are stretched by
    the profiler's own CPU overhead, the order and the GPU-side gaps are not)."""
    ev = json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
    runtime = sorted((e for e in ev if e.get("cat") == "cuda_runtime"), key=lambda e: e["args"]["correlation"])
    gpu = [e for e in ev if e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy")]
    by_corr = {e["args"]["correlation"]: e for e in gpu}
    copy_stream = {e["args"]["stream"] for e in gpu if e.get("cat") == "gpu_memcpy"}
    compute = sorted((e for e in gpu if e["args"]["stream"] not in copy_stream), key=lambda e: e["args"]["correlation"])
    corr = [e["args"]["correlation"] for e in compute]
    marks = [e for e in runtime if e["name"] in ("cudaStreamWaitEvent", "cudaEventRecordWithFlags", "cudaMemcpyAsync")]
    end = lambda e: e["ts"] + e["dur"]  # noqa: E731
    # per streamed block the engine issues: wait(copy) ... record(computed), wait(computed), memcpy, record(copied)
    copies, compute_waits, issue_us = [], [], []
    for k in range(len(marks) - 4):
        names = [m["name"] for m in marks[k:k + 4]]
        if names != ["cudaStreamWaitEvent", "cudaEventRecordWithFlags", "cudaStreamWaitEvent", "cudaMemcpyAsync"]:
            continue
        wait, record, memcpy = marks[k], marks[k + 1], marks[k + 3]
        first = compute[bisect.bisect_right(corr, wait["args"]["correlation"])]
        before = compute[bisect.bisect_left(corr, wait["args"]["correlation"]) - 1]
        compute_waits.append((first["ts"] - end(before)) / 1e3)
        freed = end(compute[bisect.bisect_left(corr, record["args"]["correlation"]) - 1])
        copies.append((by_corr[memcpy["args"]["correlation"]], freed))
        issue_us.append(memcpy["dur"])
    after_event, after_copy = [], []
    for (c, freed), prev in zip(copies[1:], copies):
        ready_copy = end(prev[0])
        (after_event if freed >= ready_copy else after_copy).append(c["ts"] - max(freed, ready_copy))
    gbps = [c["args"]["bytes"] / (c["dur"] * 1e3) for c, _ in copies]
    return {**_overhead_facts(ev, runtime, gpu, compute, copy_stream),
        "streamed_blocks": len(copies),
        "kernel_ms_per_forward": round(sum(e["dur"] for e in compute) / 1e3, 2),
        "compute_wait_ms_total": round(sum(compute_waits), 2),
        "copy_start_after_slot_event_us_median": round(statistics.median(after_event), 1) if after_event else None,
        "copy_start_after_previous_copy_us_median": round(statistics.median(after_copy), 1) if after_copy else None,
        "memcpy_issue_cpu_us_median": round(statistics.median(issue_us), 1),
        "copy_gbps_median": round(statistics.median(gbps), 2),
        "copy_gbps_min": round(min(gbps), 2),
    }


def _overhead_facts(ev, runtime, gpu, compute, copy_stream) -> dict:
    """What `planner.costmodel.CUDA_OVERHEADS` takes from a trace: the gap from a copy's end to the
    first kernel of a compute stream that sat idle waiting for it, the CUDA runtime calls' host
    time per block, and the host time from the forward's first operator to its first kernel."""
    end = lambda e: e["ts"] + e["dur"]  # noqa: E731
    starts = [e["ts"] for e in compute]
    wake = []
    for c in (e for e in gpu if e["args"]["stream"] in copy_stream):
        k = bisect.bisect_left(starts, end(c))
        if 0 < k < len(compute) and end(compute[k - 1]) < end(c):
            wake.append(compute[k]["ts"] - end(c))
    ops = [e["ts"] for e in ev if e.get("cat") == "cpu_op"]
    blocks = 57  # flux-dev: 19 double + 38 single
    api_us = sum(e["dur"] for e in runtime if e["name"] != "cudaDeviceSynchronize")
    return {
        "compute_start_after_its_copy_us_median": round(statistics.median(wake), 1) if wake else None,
        "compute_waits_counted": len(wake),
        "runtime_api_us_per_block": round(api_us / blocks, 1),
        "first_kernel_after_first_op_us": round(min(e["ts"] for e in gpu) - min(ops), 1),
    }


def _scaled_profile(profile, resolution: int):
    """The H100 profile with each block's compute scaled by its FLOPs at `resolution`."""
    from profiler.flops import model_trace

    work = dataclasses.replace(profile.workload, height=resolution, width=resolution)
    ours, theirs = model_trace("flux-dev", profile.workload), model_trace("flux-dev", work)
    blocks = tuple(
        dataclasses.replace(b, compute_ms=b.compute_ms * theirs.block(b.name).flops / ours.block(b.name).flops)
        for b in profile.blocks
    )
    return dataclasses.replace(profile, blocks=blocks, workload=work)


def sweep() -> list[dict]:
    """Predictions without and with the overheads where compute per block is small."""
    from planner.costmodel import NO_OVERHEADS, CostModel
    from planner.explain import layout_of
    from profiler.profile_json import load_profile_json
    from runtime.inventory import inventory
    from runtime.plan import load_plan

    inv = inventory("flux-dev")
    recorded = load_profile_json(DATA / "profile_flux-dev_1024_bf16.json")
    rows = []
    for resolution in (512, 768, 1024):
        profile = _scaled_profile(recorded, resolution)
        model, bare = CostModel(inv, profile), CostModel(inv, profile, NO_OVERHEADS)
        for budget in (8, 12, 16, 24):
            layout = layout_of(load_plan(DATA / f"plan_{budget}.json"), inv)
            for depth in (1, 2, 3, 4):
                lay = dataclasses.replace(layout, depth=depth)
                before, after = bare.synchronized_step_ms(lay), model.synchronized_step_ms(lay)
                copies = sum(bare.copy_ms(i, c, lay.host_memory) for i, c in enumerate(lay.casts) if lay.streamed[i])
                rows.append({
                    "resolution": resolution, "plan": f"plan_{budget}.json", "depth": depth,
                    "compute_ms": round(sum(b.compute_ms for b in profile.blocks), 2), "copy_ms": round(copies, 2),
                    "synchronized_before_ms": round(before, 2), "synchronized_after_ms": round(after, 2),
                    "added": round(after / before - 1, 4),
                    "steady_before_ms": round(bare.step_ms(lay), 2), "steady_after_ms": round(model.step_ms(lay), 2),
                })
    return rows


def _errors(rows: list[dict]) -> dict:
    """Mean and largest |error| before and after, over every run but the one outlier."""
    kept = [r for r in rows if not (r["plan"] == "plan_16.json" and r["run"] == "depth sweep B" and r["depth"] == 4)]
    out = {"runs": len(kept), "left_out": "plan_16.json depth sweep B depth 4 (15 % off run A's same placement)"}
    for key in ("steady", "before", "after"):
        errs = [abs(r[f"error_{key}"]) for r in kept]
        out[key] = {"mean_abs": round(statistics.mean(errs), 4), "max_abs": round(max(errs), 4),
                    "mean_signed": round(statistics.mean(r[f"error_{key}"] for r in kept), 4)}
    return out


def _versions() -> dict:
    import platform
    import subprocess

    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return {"python": platform.python_version(), "torch": torch.__version__, "project": commit.stdout.strip(),
            "evidence": "torch 2.11.0+cu130, diffusers 0.42.1, project 9d469e5 (the H100 run)"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evidence", type=Path, default=ROOT.parent / "shared" / "gpu-evidence" / "h100-2026-11-22")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from planner.costmodel import CUDA_OVERHEADS

    rows = replay()
    swept = sweep()
    peaks, tuned = peaks_and_retune()
    traces = {}
    for path in sorted(args.evidence.glob("trace_*.json.gz")) if args.evidence.is_dir() else []:
        traces[path.name] = trace_facts(path)
    for r in rows:
        print(f"{r['plan']:13} {r['run']:14} depth {r['depth']}: measured {r['measured_ms']:6.1f} ms, "
              f"before {r['predicted_before_ms']:6.1f} ({r['error_before']:+.1%}), "
              f"after {r['predicted_after_ms']:6.1f} ({r['error_after']:+.1%})")
    for r in peaks:
        print(f"{r['plan']:13} peak: measured {r['measured_peak_alloc'] / 2**30:.2f} GiB, before "
              f"{r['predicted_before'] / 2**30:.2f} ({r['error_before']:+.1%}), after {r['predicted_after'] / 2**30:.2f} "
              f"({r['error_after']:+.1%})")
    for r in tuned:
        print("tuned again:", json.dumps(r))
    for name, facts in traces.items():
        print(name, json.dumps(facts))
    for r in swept:
        print("sweep:", json.dumps(r))
    result = {
        "benchmark": "replay_h100",
        "device": "none: replayed on a CPU machine from evidence recorded on one NVIDIA H100 80GB HBM3 (PCIe Gen5 x16)",
        "command": "python bench/replay_h100.py",
        "versions": _versions(),
        "overheads": dataclasses.asdict(CUDA_OVERHEADS),
        "evidence": "../shared/gpu-evidence/h100-2026-11-22 (measured_flux-dev_1024_bf16.json, README.md, trace_*.json.gz)",
        "steady": "CostModel.step_ms without overheads: forward after forward with no synchronisation (what the plans carry)",
        "before": "CostModel.synchronized_step_ms without overheads (NO_OVERHEADS): each forward between two device "
                  "synchronisations, as the runs were timed; the model before the overheads",
        "after": "the same with CUDA_OVERHEADS (event-wait latency, host launch time per block, a synchronised "
                 "forward's host head start), taken from the traces (traces.*: compute_start_after_its_copy_us_median, "
                 "runtime_api_us_per_block, first_kernel_after_first_op_us)",
        "error_summary": _errors(rows),
        "rows": rows,
        "sweep_note": "no measurement: the recorded placements at depth 1-4 with compute per block scaled to the "
                      "resolution by FLOPs; 'added' is what the overheads add to the synchronised prediction",
        "sweep_added_by_resolution": {
            str(res): [min(r["added"] for r in swept if r["resolution"] == res),
                       max(r["added"] for r in swept if r["resolution"] == res)]
            for res in sorted({r["resolution"] for r in swept})
        },
        "sweep": swept,
        "peaks": peaks,
        "peaks_note": "after = the recorded profile with the workspace profiler.run measures now: the largest block's "
                      "inputs (33.0 MB) + 32 MiB cuBLAS workspace (torch's Hopper default, not measured there)",
        "tuned_again": tuned,
        "traces": traces,
    }
    out = ROOT / "bench" / "results" / "replay_h100.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
