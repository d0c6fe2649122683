"""Issue 25 (Trust II), noise: during our commands third-party messages (their warnings, log
records, progress bars) go to our debug log, not the terminal; `models inspect` of a plain file
stays light. Real subprocesses (library handlers hold the real stderr), a tiny FluxPipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
CLI = 'import sys; from planner.cli import main; sys.argv[0] = "planner"; main()'


def _planner(*args: str, env: dict, code: str = CLI) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


@pytest.fixture
def env(tmp_path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "XDG_DATA_HOME": str(tmp_path / "data"),
            "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME", str(tmp_path / "cache")),
            "PLANNER_LOG": str(tmp_path / "planner.log")}


def test_apply_prints_only_our_lines_and_no_ratio_for_another_device(tmp_path, env):
    """A plan for an RTX 4060 run on the CPU: its lower bound is not this run's (it printed
    "154x the lower bound"), and nothing but our lines reaches the terminal."""
    from runtime.inventory import inventory
    from runtime.plan import Predictions, Target, build_plan, save_plan
    from runtime.workload import Workload

    from typer.testing import CliRunner

    from planner.cli import app

    weights = tmp_path / "tiny-flux"  # as the README's quick start makes it
    made = CliRunner().invoke(app, ["models", "tiny-pipeline", str(weights)])
    assert made.exit_code == 0 and (weights / "model_index.json").is_file(), made.output
    assert CliRunner().invoke(app, ["models", "tiny-pipeline", str(weights)]).exit_code == 2, "never over a folder"
    inv = inventory("tiny-flux")
    plan = tmp_path / "plan.json"
    save_plan(build_plan(inv, {b.name for b in inv.blocks[::2]}, workload=Workload(64, 64, text_tokens=16),
                         target=Target("rtx-4060", 1 << 30),
                         predictions=Predictions(5.0, 2 << 20, 4.0)), plan)
    done = _planner("apply", str(plan), "--weights", str(weights), "--prompt", "a cat", "--steps", "1",
                    "-o", str(tmp_path / "cat.png"), "--device", "cpu", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", f"third-party noise on the terminal:\n{done.stderr}"
    assert done.stdout.startswith("wrote ")
    assert "offload_planner" not in done.stdout
    assert "lower bound (4.0 ms/step): not compared" in done.stdout, done.stdout


def test_inspect_of_a_plain_file_imports_neither_torch_nor_bitsandbytes(tmp_path, env):
    from typer.testing import CliRunner

    from conftest import build_tiny_flux
    from planner.cli import app

    path = tmp_path / "flux.safetensors"
    from safetensors.torch import save_file

    save_file(build_tiny_flux().state_dict(), str(path))
    assert CliRunner().invoke(app, ["models", "inspect", str(path)]).exit_code == 0  # the cache is warm
    probe = CLI.replace("main()", "") + (
        "\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('heavy:', sorted(m for m in ('torch', 'diffusers', 'bitsandbytes') if m in sys.modules))")
    done = _planner("models", "inspect", str(path), env=env, code=probe)
    assert "flux" in done.stdout and "heavy: []" in done.stdout, done.stdout + done.stderr


def test_the_readme_quick_start_ends_with_a_dry_run_of_apply():
    blocks = [b.split("```", 1)[0] for b in (ROOT / "README.md").read_text().split("```bash\n")[1:]]
    setup, dry_run = blocks[0].strip().splitlines(), blocks[1].strip().splitlines()
    assert len(setup) == 2, "the README opens with exactly two set-up commands: install, tests"
    assert setup[0].startswith("python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e .")
    assert "planner models tiny-pipeline tiny-flux" in dry_run[-1]
    assert "planner apply tiny.json --weights tiny-flux" in dry_run[-1]
