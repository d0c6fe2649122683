"""`planner tune` through the real CLI, a real SQLite store and real plan files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from planner.cli import app
from runtime.plan import load_plan

runner = CliRunner()


def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


def test_readme_main_job_stores_the_plan_and_writes_plan_json(tmp_path):
    pytest.importorskip("db.store")
    pytest.importorskip("profiler.reference")
    from db.store import open_store

    out = tmp_path / "plan.json"
    args = ["tune", "--model", "flux-dev", "--vram", "8GB", "--gpu", "rtx-4060", "--db", db_url(tmp_path), "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    plan = load_plan(out)
    assert plan.target.gpu_name == "rtx-4060" and plan.target.vram_budget_bytes == 8 * 2**30
    assert plan.predictions.peak_vram_bytes <= 8 * 2**30
    assert plan.predictions.step_ms >= plan.predictions.lower_bound_ms * (1 - 1e-9) > 0
    assert plan.provenance.profile_id is None
    for words in ("s/step", "floor:", "the best any placement does", "stream-all", "largest-first", "pinned"):
        assert words in result.output
    with open_store(db_url(tmp_path)) as store:
        assert store.find_plan(plan) is not None

    again = runner.invoke(app, args[:-2] + ["--json"])
    assert again.exit_code == 0, again.output
    data = json.loads(again.output)
    assert data["plan"]["blocks"] == json.loads(out.read_text())["blocks"]  # same seed, same plan
    assert data["pareto"] and all(p["peak_vram_bytes"] > 0 for p in data["pareto"])
    assert all(data["step_ms"] <= p["step_ms"] + 1e-9 for p in data["policies"] if p["fits"])


def test_budget_nothing_fits_exits_2_with_the_minimum(tmp_path):
    pytest.importorskip("profiler.reference")
    result = runner.invoke(app, ["tune", "--model", "flux-dev", "--vram", "1GB", "--gpu", "rtx-4060", "--db", db_url(tmp_path)])
    assert result.exit_code == 2
    assert "give --vram" in result.output and "GiB or more" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_no_profile_and_no_gpu_names_the_reference_gpus(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: tune would profile it")
    pytest.importorskip("profiler.reference")
    result = runner.invoke(app, ["tune", "--model", "flux-dev", "--vram", "8GB", "--db", db_url(tmp_path)])
    assert result.exit_code == 2
    assert "--gpu NAME" in result.output and "rtx-4060" in result.output and "--profile ID" in result.output


def test_verify_without_a_gpu_exits_2(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = runner.invoke(app, ["tune", "--model", "flux-dev", "--vram", "8GB", "--gpu", "rtx-4060", "--verify", "2", "--db", db_url(tmp_path)])
    assert result.exit_code == 2
    assert "--verify" in result.output and "GPU" in result.output


def test_bad_vram_is_one_clear_line():
    result = runner.invoke(app, ["tune", "--model", "flux-dev", "--vram", "lots", "--gpu", "rtx-4060"])
    assert result.exit_code == 2
    assert "--vram 'lots' is not a size" in result.output


def test_tiny_flux_from_a_stored_cpu_profile(tmp_path):
    pytest.importorskip("db.store")
    from db.store import open_store
    from runtime.inventory import inventory
    from test_costmodel import profile_for

    inv = inventory("tiny-flux")
    with open_store(db_url(tmp_path)) as store:
        profile_id = store.save_profile(profile_for(inv, 2.0, under_compute_gbps=0.001))
    out = tmp_path / "tiny.json"
    budget = 600_000  # bytes: room for some blocks, not all
    result = runner.invoke(app, ["tune", "--model", "tiny-flux", "--vram", str(budget), "--profile", str(profile_id),
                                 "--db", db_url(tmp_path), "-o", str(out), "--trials", "20"])
    assert result.exit_code == 0, result.output
    plan = load_plan(out)
    assert plan.provenance.profile_id == profile_id
    assert plan.target.gpu_name == "cpu"
    assert plan.streamed and plan.resident
    assert plan.predictions.peak_vram_bytes <= budget


def test_tiny_flux_plan_runs_under_the_runtime(tmp_path, tiny_flux):
    pytest.importorskip("runtime.apply")
    import torch

    from planner.costmodel import CostModel
    from planner.explain import layout_of
    from planner.search import Settings, search
    from planner.app.placing import plan_of
    from planner.app.request import ProfileSource
    from runtime.apply import apply_plan
    from runtime.inventory import inventory
    from runtime.workload import CfgMode
    from test_costmodel import profile_for

    inv = inventory("tiny-flux")
    prof = profile_for(inv, 2.0, under_compute_gbps=0.001)
    source = ProfileSource({CfgMode.NONE: prof}, "cpu", None, False)
    result = search(inv, source.profiles, Settings(600_000, trials=10))
    plan, prediction = plan_of(inv, source, result.best, 600_000)
    expected = {name: t.detach().clone() for name, t in tiny_flux.state_dict().items()}
    handle = apply_plan(tiny_flux, plan, device="cpu")
    try:
        assert handle.stats.device_weight_bytes == CostModel(inv, prof).device_weight_bytes(layout_of(plan, inv))
        assert handle.stats.streamed_blocks == len(plan.streamed)
    finally:
        handle.remove()
    for name, t in tiny_flux.state_dict().items():
        assert torch.equal(t, expected[name])


def test_help_imports_no_heavy_library():
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom planner.cli import app\n"
        "r = CliRunner().invoke(app, ['tune', '--help'])\nassert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(app, ['explain', '--help'])\nassert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in ('torch', 'optuna', 'sqlalchemy', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
