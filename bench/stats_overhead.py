"""Overhead of recording activation statistics (`runtime.analysis.stats`) on CPU.

The mid-size FLUX of `bench/runtime_overhead.py` (4 double + 8 single blocks, 8 heads x 64),
one forward with and one without the recorder's hooks, interleaved; medians compared. The
outputs must be bitwise equal. On a GPU the hooks' counting is one elementwise pass and one
reduction per MLP (no synchronisation per forward), against the MLP's two matmuls.

    python bench/stats_overhead.py [--runs 9] [--tokens 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from runtime_overhead import CONFIG, mid_flux_inputs  # the same mid-size FLUX and inputs


def main() -> None:
    import diffusers
    import torch

    from runtime.analysis.stats import record_stats
    from runtime.families import get_family

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=256, help="image tokens per forward")
    parser.add_argument("--text", type=int, default=64, help="text tokens per forward")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = get_family("flux").build(CONFIG, device="cpu")
    inputs = mid_flux_inputs(args.tokens, args.text)
    times: dict[str, list[float]] = {"plain": [], "recording": []}
    with torch.no_grad():
        reference = model(**inputs).sample
        recorder = record_stats(model)
        assert torch.equal(model(**inputs).sample, reference)
        recorder.remove()
        for _ in range(args.runs):
            for name in times:
                recorder = record_stats(model) if name == "recording" else None
                start = time.perf_counter()
                model(**inputs)
                times[name].append((time.perf_counter() - start) * 1000.0)
                if recorder is not None:
                    recorder.remove()
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = medians["recording"] / medians["plain"]
    for name, t in times.items():
        print(f"{name:9s} median {medians[name]:8.2f} ms/forward (min {min(t):.2f}, n={args.runs})")
    min_ratio = min(times["recording"]) / min(times["plain"])
    print(f"recording / plain = {ratio:.4f} (overhead {100 * (ratio - 1):+.2f}%); by minimum "
          f"(less sensitive to a loaded machine) {min_ratio:.4f}")
    result = {
        "benchmark": "stats_overhead", "device": "cpu",
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in CONFIG.items()},
        "image_tokens": args.tokens, "text_tokens": args.text, "runs": args.runs,
        "median_ms": medians, "ratio_to_plain": ratio, "min_ratio_to_plain": min_ratio,
        "all_ms": times,
    }
    out = Path(__file__).resolve().parent / "results" / "stats_overhead_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
