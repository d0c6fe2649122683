"""`planner --help` stays light: no torch, sqlalchemy, optuna or diffusers on the help path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

HEAVY = ("torch", "sqlalchemy", "optuna", "diffusers")


def modules_after(args: list[str]) -> dict:
    """Run `planner ARGS` in a fresh interpreter; report its exit code and heavy imports."""
    code = textwrap.dedent(
        f"""
        import json, sys
        from typer.testing import CliRunner
        from planner.cli import app
        result = CliRunner().invoke(app, {args!r})
        print(json.dumps({{
            "exit_code": result.exit_code,
            "output": result.output,
            "heavy": [m for m in {HEAVY!r} if m in sys.modules],
        }}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "args", [["--help"], ["models", "--help"], ["models", "inspect", "--help"], ["tune", "--help"]]
)
def test_help_imports_nothing_heavy(args):
    seen = modules_after(args)
    assert seen["exit_code"] == 0, seen["output"]
    assert "Usage" in seen["output"]
    assert seen["heavy"] == []


def test_the_check_sees_a_heavy_import(tmp_path):
    # profiling builds the model and runs it: torch and diffusers
    seen = modules_after(["profile", "--model", "tiny-flux", "--resolution", "32x32",
                          "--device", "cpu", "--db", f"sqlite:///{tmp_path / 's.db'}", "--json"])
    assert seen["exit_code"] == 0, seen["output"]
    assert "torch" in seen["heavy"] and "diffusers" in seen["heavy"]


def test_tune_for_a_reference_gpu_imports_neither_torch_nor_diffusers(tmp_path):
    # the catalog model's inventory and trace come from the shipped model cache
    from runtime import model_cache
    from runtime.version import TOOL_VERSION

    if model_cache.seed_versions() != {"diffusers": model_cache._diffusers_version(), "tool": TOOL_VERSION}:
        pytest.skip("the shipped model cache seed is for other versions: `python -m profiler.cache_seed`")
    seen = modules_after(["tune", "--model", "flux-dev", "--vram", "8GB", "--gpu", "rtx-4060",
                          "--db", f"sqlite:///{tmp_path / 's.db'}"])
    assert seen["exit_code"] == 0, seen["output"]
    assert "torch" not in seen["heavy"] and "diffusers" not in seen["heavy"]


def test_help_lists_the_command_groups():
    from planner.cli import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("models", "plans", "tune", "apply"):
        assert name in result.stdout
    models = CliRunner().invoke(app, ["models", "--help"])
    assert models.exit_code == 0
    for name in ("list", "show", "inspect"):
        assert name in models.stdout
