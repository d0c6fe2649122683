"""Tune speed: wall time of `planner tune` from process start to plan, for the README's examples.

Each case runs the real CLI in a fresh interpreter (`python -m planner.cli`-equivalent through
the installed entry point's function), with a private store and a private model cache, twice:
cold (empty user cache: inventory and trace come from the seed shipped in runtime/data, or are
derived where the seed lacks them) and warm (the same command again). It also records whether
torch and diffusers were imported on the way.

    python bench/tune_speed.py [-o bench/results/tune_speed_cpu.json]

Target (issue: speed and prediction): flux-dev on a reference GPU under 3 s on the 2-core CI machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [
    ["--model", "flux-dev", "--vram", "8GB", "--gpu", "rtx-4060"],
    ["--model", "flux2-dev", "--vram", "24GB", "--gpu", "rtx-4090"],
    ["--model", "qwen-image", "--vram", "16GB", "--gpu", "rtx-4080"],
    ["--model", "sd3.5-large", "--vram", "8GB", "--gpu", "rtx-4060"],
    ["--model", "wan2.2-t2v-a14b", "--resolution", "832x480", "--frames", "81", "--vram", "12GB", "--gpu", "rtx-4070"],
    ["--model", "sdxl", "--vram", "4GB", "--gpu", "rtx-3060"],
]
_RUN = (
    "import json, sys, time\n"
    "from planner.cli import main\n"
    "sys.argv = ['planner', 'tune'] + json.loads(sys.argv[1])\n"
    "try:\n    main()\nexcept SystemExit as e:\n    code = e.code or 0\nelse:\n    code = 0\n"
    "heavy = [m for m in ('torch', 'diffusers') if m in sys.modules]\n"
    "print('@@' + json.dumps({'exit': code, 'heavy': heavy}))\n"
)


def run(args: list[str], env: dict) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _RUN, json.dumps(args)], capture_output=True,
                          text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - started
    tail = [line for line in done.stdout.splitlines() if line.startswith("@@")]
    info = json.loads(tail[-1][2:]) if tail else {"exit": done.returncode, "heavy": None}
    if info["exit"] != 0:
        info["error"] = (done.stderr or done.stdout).strip().splitlines()[-1:]
    return {"wall_s": round(wall, 3), **info}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=str(Path(__file__).parent / "results" / "tune_speed_cpu.json"))
    args = parser.parse_args(argv)

    from runtime.catalog import find_model
    from runtime.version import TOOL_VERSION

    rows = []
    for case in CASES:
        model = case[case.index("--model") + 1]
        if find_model(model) is None:
            print(f"skip {model}: not in this catalog", flush=True)
            continue
        with tempfile.TemporaryDirectory() as home:
            env = {**os.environ, "XDG_DATA_HOME": f"{home}/data", "XDG_CACHE_HOME": f"{home}/cache"}
            env.pop("PLANNER_DB_URL", None)
            cold, warm = run(case, env), run(case, env)
        rows.append({"command": "planner tune " + " ".join(case), "cold": cold, "warm": warm})
        print(f"{' '.join(case):80} cold {cold['wall_s']:6.2f} s  warm {warm['wall_s']:6.2f} s  "
              f"heavy imports {cold['heavy']}", flush=True)
    import diffusers
    import optuna

    out = {
        "benchmark": "tune_speed",
        "command": "python bench/tune_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": {"machine": platform.machine(), "cpus": os.cpu_count(),
                   "note": "CPU only; reference GPU profiles; wall time of a fresh interpreter"},
        "versions": {"offload_planner": TOOL_VERSION, "python": platform.python_version(),
                     "optuna": optuna.__version__, "diffusers": diffusers.__version__},
        "cases": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"-> {args.output}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
