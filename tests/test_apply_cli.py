"""`planner apply` end to end on a tiny FluxPipeline saved to disk (CPU, nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from runtime.catalog import get_model
from runtime.inventory import inventory
from runtime.plan import Predictions, Target, build_plan, save_plan
from runtime.workload import Workload
from tests.pipeline_fixtures import save_tiny_pipeline


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "tiny-flux")


def _plan(tmp_path, model_id="tiny-flux", **kw) -> Path:
    inv = inventory(model_id)
    streamed = {b.name for b in inv.blocks[::2]}
    plan = build_plan(inv, streamed, workload=Workload(64, 64, text_tokens=16),
                      target=Target("cpu", 1 << 30), prefetch_depth=2,
                      predictions=Predictions(step_ms=5.0, peak_vram_bytes=2 << 20,
                                              lower_bound_ms=4.0), **kw)
    path = tmp_path / f"{model_id}.json"
    save_plan(plan, path)
    return path


def test_tiny_pipeline_transformer_is_the_catalog_tiny_flux(weights):
    config = json.loads((weights / "transformer" / "config.json").read_text())
    for key, value in get_model("tiny-flux").config.items():
        assert config[key] == (list(value) if isinstance(value, tuple) else value), key


def test_apply_generates_an_image(weights, tmp_path):
    from PIL import Image

    out = tmp_path / "out.png"
    result = CliRunner().invoke(app, [
        "apply", str(_plan(tmp_path)), "--weights", str(weights), "--prompt", "a cat",
        "--steps", "2", "--height", "64", "--width", "64", "-o", str(out), "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.size == (64, 64)
    assert "s/step over 2 steps on cpu" in result.output
    assert "peak VRAM not measured on CPU (plan predicted 2.00 MiB)" in result.output
    assert "ratio to the plan's lower bound (4.0 ms/step): " in result.output


def test_apply_json(weights, tmp_path):
    out = tmp_path / "x.png"
    result = CliRunner().invoke(app, [
        "apply", str(_plan(tmp_path)), "--weights", str(weights), "--prompt", "a dog",
        "--steps", "1", "-o", str(out), "--device", "cpu", "--json",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert data["steps"] == 1 and len(data["step_ms"]) == 1 and data["peak_vram_bytes"] is None
    assert data["ratio_to_lower_bound"] == pytest.approx(data["step_ms"][0] / 4.0)
    assert isinstance(data["run_id"], int) and out.is_file()  # recorded in the default store


@pytest.mark.parametrize("case", ["missing plan", "other model", "missing weights"])
def test_bad_input_is_one_line_exit_2(weights, tmp_path, case):
    plan = tmp_path / "nope.json"
    folder = weights
    if case == "other model":
        plan = _plan(tmp_path, "flux-schnell")
    elif case == "missing weights":
        plan, folder = _plan(tmp_path), tmp_path / "no-such-folder"
    out = tmp_path / "never.png"
    result = CliRunner().invoke(app, [
        "apply", str(plan), "--weights", str(folder), "--prompt", "a cat", "-o", str(out),
        "--device", "cpu",
    ])
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and not out.exists()


def test_apply_records_the_measured_run_in_the_store(weights, tmp_path):
    from db.store import open_store
    from runtime.plan import load_plan

    url = f"sqlite:///{tmp_path / 'store.db'}"
    plan_path = _plan(tmp_path)
    args = ["apply", str(plan_path), "--weights", str(weights), "--prompt", "a cat",
            "--steps", "2", "-o", str(tmp_path / "o.png"), "--device", "cpu", "--db", url]
    for _ in range(2):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    with open_store(url) as store:
        stored = store.list_plans()
    assert len(stored) == 1, "the same plan is stored once"
    assert stored[0].plan == load_plan(plan_path)
    assert stored[0].runs == 2 and stored[0].best_measured_ms > 0
