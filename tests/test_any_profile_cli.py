"""`planner profile --weights FOLDER`, `planner tune --profile ID` and `planner apply --weights
FOLDER --vram` for a pipeline class without an adapter (a tiny Sana built here; CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from tests.anymodel_fixtures import save_pipeline


@pytest.fixture(scope="module")
def sana(tmp_path_factory) -> Path:
    return save_pipeline("sana", tmp_path_factory.mktemp("pipe") / "sana")


def _json(result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_profile_then_tune_then_apply_starts_tuned(sana, tmp_path):
    from runtime.components import load_any_pipeline, module_bytes

    db = f"sqlite:///{tmp_path / 'store.db'}"
    runner = CliRunner()
    profiled = _json(runner.invoke(app, [
        "profile", "--weights", str(sana), "--resolution", "32x32", "--device", "cpu", "--db", db, "--json",
    ]))
    assert len(profiled) == 1 and profiled[0]["component"] == "transformer"
    profile = profiled[0]
    assert profile["model_id"].startswith("auto:SanaTransformer2DModel:")
    assert [b["kind"] for b in profile["blocks"]] == ["SanaTransformerBlock"] * 4
    assert all(b["compute_ms"] > 0 for b in profile["blocks"])

    pipe = load_any_pipeline(sana)
    budget = module_bytes(pipe.transformer) * 5 // 4
    out = tmp_path / "plan.json"
    tuned = _json(runner.invoke(app, [
        "tune", "--profile", str(profile["id"]), "--vram", str(budget), "-o", str(out), "--db", db, "--json",
    ]))
    assert tuned["plan"]["model"]["id"] == profile["model_id"] and out.is_file()
    assert tuned["plan"]["provenance"]["profile_id"] == profile["id"]

    applied = _json(runner.invoke(app, [  # the VAE stays on the device beside the budget tuned for
        "apply", "--weights", str(sana), "--vram", str(budget + module_bytes(pipe.vae)),
        "--prompt", "a cat", "--steps", "2", "--height", "32", "--width", "32",
        "-o", str(tmp_path / "x.png"), "--device", "cpu", "--db", db, "--json",
    ]))
    transformer = next(c for c in applied["components"] if c["name"] == "transformer")
    assert transformer["source"] == "stored plan"  # no first-step measuring: it started tuned
    assert applied["runs"][0]["plan_id"] == tuned["plan_id"]


def test_profile_takes_a_model_or_a_folder_not_both(sana):
    result = CliRunner().invoke(app, ["profile", "--model", "tiny-flux", "--weights", str(sana)])
    assert result.exit_code != 0 and "one of them" in result.output


def test_tune_of_a_catalog_profile_without_model_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["tune", "--vram", "8GB", "--db", f"sqlite:///{tmp_path / 's.db'}"])
    assert result.exit_code != 0 and "give --model ID, or --profile ID" in result.output
