"""Search quality: how close `planner tune`'s search gets to the best plan of its space.

For FLUX.1-dev on reference GPUs at three budgets each, it runs the search (Optuna, seeded with
the peer policies) and an exhaustive enumeration of the same structured space under the same
cost model, and records the optimality gap (tuned / exhaustive - 1) and the search time.

    python bench/search_quality.py [--trials N] [--seed S] [--dtype bf16] [-o bench/results/search_quality.json]

Target: gap under 1 % everywhere and the search under 10 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

CASES = {  # reference GPU -> budgets (GiB): the whole card, and two smaller shares of it
    "rtx-4060": (8, 6, 4),
    "rtx-4070": (12, 8, 6),
    "rtx-3090": (24, 16, 10),
    "rtx-4090": (24, 16, 10),
}
MODEL = "flux-dev"


def run_case(gpu: str, budget_gib: int, dtype, workload, trials: int, seed: int) -> dict:
    from planner.search import Settings, exhaustive, search
    from profiler.reference import reference_profile
    from runtime.inventory import inventory

    inv = inventory(MODEL, dtype)
    profiles = {workload.cfg: reference_profile(gpu, MODEL, workload, dtype)}
    budget = budget_gib * 2**30
    started = time.perf_counter()
    result = search(inv, profiles, Settings(budget, trials=trials, seed=seed))
    tune_s = time.perf_counter() - started
    started = time.perf_counter()
    best, scored = exhaustive(inv, profiles, budget)
    exhaustive_s = time.perf_counter() - started
    peers = {p.value: (s.step_ms if s else None) for p, s in result.policies}
    return {
        "gpu": gpu,
        "budget_gib": budget_gib,
        "tuned_step_ms": round(result.best.step_ms, 3),
        "tuned": result.best.candidate.to_dict(),
        "exhaustive_step_ms": round(best.step_ms, 3),
        "exhaustive": best.candidate.to_dict(),
        "gap_percent": round((result.best.step_ms / best.step_ms - 1) * 100, 4),
        "search_s": round(tune_s, 3),
        "trials": result.trials,
        "exhaustive_s": round(exhaustive_s, 3),
        "exhaustive_scored": scored,
        "best_peer_step_ms": round(min(v for v in peers.values() if v is not None), 3),
        "peers_step_ms": {k: (round(v, 3) if v is not None else None) for k, v in peers.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--resolutions", default="1024x1024,512x512", help="comma-separated")
    parser.add_argument("-o", "--output", default=str(Path(__file__).parent / "results" / "search_quality.json"))
    args = parser.parse_args(argv)

    import optuna
    import torch

    from planner.search import DEFAULT_TRIALS
    from runtime.catalog import get_model
    from runtime.dtypes import DType
    from runtime.version import TOOL_VERSION
    from runtime.workload import Workload, parse_resolution

    trials = args.trials or DEFAULT_TRIALS
    dtype = DType.parse(args.dtype)
    rows = []
    for resolution in args.resolutions.split(","):
        width, height = parse_resolution(resolution)
        workload = Workload(height, width, text_tokens=get_model(MODEL).text_tokens)
        for gpu, budgets in CASES.items():
            for budget in budgets:
                row = {"resolution": workload.resolution, **run_case(gpu, budget, dtype, workload, trials, args.seed)}
                rows.append(row)
                print(
                    f"{resolution:9} {gpu:9} {budget:3d} GiB  tuned {row['tuned_step_ms']:9.1f} ms  exhaustive "
                    f"{row['exhaustive_step_ms']:9.1f} ms  gap {row['gap_percent']:6.3f} %  "
                    f"search {row['search_s']:5.2f} s  best peer {row['best_peer_step_ms']:9.1f} ms",
                    flush=True,
                )
    out = {
        "benchmark": "search_quality",
        "command": "python bench/search_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": MODEL,
        "dtype": dtype.value,
        "workload": {"resolutions": args.resolutions.split(","), "batch": 1, "text_tokens": get_model(MODEL).text_tokens},
        "trials": trials,
        "seed": args.seed,
        "device": {
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "note": "CPU only; profiles are reference estimates (profiler.reference)",
        },
        "versions": {
            "offload_planner": TOOL_VERSION,
            "python": platform.python_version(),
            "optuna": optuna.__version__,
            "torch": torch.__version__,
        },
        "max_gap_percent": max(r["gap_percent"] for r in rows),
        "max_search_s": max(r["search_s"] for r in rows),
        "cases": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"max gap {out['max_gap_percent']:.3f} %, max search {out['max_search_s']:.2f} s -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
