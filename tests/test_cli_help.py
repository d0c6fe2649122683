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


def test_the_check_sees_a_heavy_import():
    seen = modules_after(["models", "show", "tiny-flux", "--json"])  # builds the model: torch
    assert seen["exit_code"] == 0, seen["output"]
    assert "torch" in seen["heavy"] and "diffusers" in seen["heavy"]


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
