"""The whole data flow on CPU through the real CLI: profile -> tune -> apply -> stored run."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from planner.cli import app
from runtime.plan import load_plan
from tests.pipeline_fixtures import save_tiny_pipeline

runner = CliRunner()


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_profile_tune_apply_on_cpu(tmp_path):
    db = ["--db", f"sqlite:///{tmp_path / 'store.db'}"]
    profile = json.loads(_ok(["profile", "--model", "tiny-flux", "--device", "cpu",
                              "--resolution", "64x64", "--json", *db]))
    assert profile["is_estimate"] is False and profile["device"] == "cpu"

    plan_path = tmp_path / "plan.json"
    # 700 KiB: the whole of tiny-flux (about 900 KiB with activations) does not fit, so blocks stream
    _ok(["tune", "--model", "tiny-flux", "--vram", "700KB", "--profile", str(profile["id"]),
         "--resolution", "64x64", "--trials", "20", "-o", str(plan_path), *db])
    plan = load_plan(plan_path)
    assert plan.provenance.profile_id == profile["id"]
    assert plan.streamed, "a 700 KiB budget cannot hold every tiny-flux block"

    weights = save_tiny_pipeline(tmp_path / "pipe")
    image = tmp_path / "cat.png"
    out = json.loads(_ok(["apply", str(plan_path), "--weights", str(weights), "--prompt", "a cat",
                          "--steps", "2", "--device", "cpu", "-o", str(image), "--json", *db]))
    assert image.stat().st_size > 0 and out["steps"] == 2

    shown = json.loads(_ok(["plans", "list", "--model", "tiny-flux", "--json", *db]))
    assert [p["runs"] for p in shown] == [1], "the tuned plan is stored once, with the measured run"
