"""`planner explain`: per-block compute, copy and wait from the cost model, and a PNG."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from planner.cli import app
from planner.explain import explain
from runtime.plan import CastMode, HostMemory, Target, build_plan
from runtime.workload import Workload
from test_costmodel import profile_for, toy_inventory

runner = CliRunner()


def test_waits_are_the_bubbles_of_a_depth_1_plan():
    # compute 5 ms, copy 1 ms, depth 1, all streamed: each block waits 1 ms for its copy
    inv = toy_inventory()
    prof = profile_for(inv, 5, under_compute_gbps=1.0)
    plan = build_plan(inv, {b.name for b in inv.blocks}, workload=prof.workload, target=Target("cpu", 2**30),
                      prefetch_depth=1, host_memory=HostMemory.PINNED, cast=CastMode.PRE)
    result = explain(plan, prof, inv)
    assert [round(r.wait_ms, 9) for r in result.rows] == [1.0, 1.0, 1.0]
    assert [r.copy_ms for r in result.rows] == pytest.approx([1.0, 1.0, 1.0])
    assert result.prediction.step_ms == pytest.approx(18)
    deeper = explain(build_plan(inv, {b.name for b in inv.blocks}, workload=prof.workload,
                                target=Target("cpu", 2**30), prefetch_depth=2), prof, inv)
    assert deeper.wait_ms == pytest.approx(0.0)


def test_explain_refuses_a_profile_of_another_workload():
    from runtime.errors import UserError

    inv = toy_inventory()
    prof = profile_for(inv, 5)
    plan = build_plan(inv, set(), workload=Workload(512, 512, text_tokens=16), target=Target("cpu", 2**30))
    with pytest.raises(UserError, match="use a profile of the plan's workload"):
        explain(plan, prof, inv)


def test_explain_cli_on_a_tuned_plan_prints_rows_and_writes_a_png(tmp_path):
    pytest.importorskip("profiler.reference")
    pytest.importorskip("db.store")
    pytest.importorskip("matplotlib")
    db = f"sqlite:///{tmp_path / 'store.db'}"
    plan_file, png = tmp_path / "plan.json", tmp_path / "timeline.png"
    tuned = runner.invoke(app, ["tune", "--model", "flux-dev", "--vram", "8GB", "--gpu", "rtx-4060",
                                "--resolution", "512x512", "--trials", "30", "--db", db, "-o", str(plan_file)])
    assert tuned.exit_code == 0, tuned.output
    result = runner.invoke(app, ["explain", str(plan_file), "--png", str(png), "--db", db])
    assert result.exit_code == 0, result.output
    assert "single_transformer_blocks.37" in result.output and "transformer_blocks.0" in result.output
    assert "x the floor of" in result.output and "between device synchronisations" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    as_json = runner.invoke(app, ["explain", str(plan_file), "--json", "--db", db])
    data = json.loads(as_json.output)
    assert len(data["blocks"]) == 57
    plan = json.loads(plan_file.read_text())
    assert data["step_ms"] == pytest.approx(plan["predictions"]["step_ms"])
    assert data["ratio_to_floor"] == pytest.approx(data["step_ms"] / data["lower_bound_ms"]) and data["ratio_to_floor"] >= 1
    assert data["synchronized_step_ms"] > 0
    streams = {e["stream"] for e in data["timeline"]}
    assert streams == {"copy", "compute"}


def test_explain_without_a_known_profile_says_what_to_pass(tmp_path):
    pytest.importorskip("profiler.reference")
    from runtime.inventory import inventory
    from runtime.plan import save_plan

    inv = inventory("tiny-flux")
    plan = build_plan(inv, set(), workload=Workload(256, 256, text_tokens=16), target=Target("my-laptop", 2**30))
    save_plan(plan, tmp_path / "p.json")
    result = runner.invoke(app, ["explain", str(tmp_path / "p.json")])
    assert result.exit_code == 2
    assert "--gpu NAME or --profile ID" in result.output
