"""Activation statistics (`runtime.analysis.stats`, `planner apply --record-stats`) on the
tiny FLUX: the hooks change no output bit, the counts are the activations' own, a fixed seed
records the same file, and runs add up in one safetensors file."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from planner.cli import app
from runtime.analysis.stats import ACTIVE_THRESHOLD, load_stats, record_stats
from runtime.families import get_family
from runtime.workload import Workload
from tests.conftest import build_tiny_flux
from tests.test_apply_cli import _plan
from tests.pipeline_fixtures import save_tiny_pipeline

# 64x128 pixels: 32 image tokens beside the 16 text tokens (the two streams differ in shape)
WORKLOAD = Workload(64, 128, text_tokens=16)


def _inputs(model, seed: int = 1) -> dict:
    torch.manual_seed(seed)
    return get_family("flux").model_inputs(model, WORKLOAD, "cpu", torch.float32)


def test_recording_changes_no_output_bit():
    model = build_tiny_flux()
    with torch.no_grad():
        plain = model(**_inputs(model))[0]
        recorder = record_stats(model)
        recorded = model(**_inputs(model))[0]
        recorder.remove()
    assert torch.equal(plain, recorded)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_counts_are_the_activations_own():
    """The single block's MLP units, counted independently from `proj_mlp` and `act_mlp`."""
    model = build_tiny_flux()
    block = model.single_transformer_blocks[2]
    seen = []
    hook = block.proj_mlp.register_forward_hook(lambda m, a, out: seen.append(block.act_mlp(out)))
    recorder = record_stats(model)
    with torch.no_grad():
        model(**_inputs(model))
    hook.remove(), recorder.remove()
    stats = recorder.collect()
    hidden = seen[0].reshape(-1, seen[0].shape[-1])
    key = "mlp/single_transformer_blocks.2/proj_out"
    assert torch.equal(stats.tensors[f"{key}/active"], (hidden.abs() > ACTIVE_THRESHOLD).sum(0))
    assert int(stats.tensors[f"{key}/tokens"][0]) == hidden.shape[0] == 16 + 32
    assert stats.threshold == ACTIVE_THRESHOLD and stats.runs == 1


def test_residual_update_is_the_blocks_own():
    model = build_tiny_flux()
    block = model.transformer_blocks[1]
    seen = {}
    hook = block.register_forward_hook(
        lambda m, a, kw, out: seen.update(kw=kw, out=out), with_kwargs=True)
    recorder = record_stats(model)
    with torch.no_grad():
        model(**_inputs(model))
    hook.remove(), recorder.remove()
    text_out, image_out = seen["out"]
    text_in, image_in = seen["kw"]["encoder_hidden_states"], seen["kw"]["hidden_states"]
    update = ((image_out - image_in).double().norm(dim=-1).sum()
              + (text_out - text_in).double().norm(dim=-1).sum())
    mean, relative = recorder.collect().residual_norm("transformer_blocks.1")
    assert mean == pytest.approx(float(update) / (16 + 32), rel=1e-6)  # norms in float32
    assert 0 < relative


def test_a_fixed_seed_records_the_same_statistics(tmp_path):
    """Every count and sum equal (safetensors may order the header's metadata either way)."""
    files = []
    for name in ("a", "b"):
        model = build_tiny_flux()
        recorder = record_stats(model)
        with torch.no_grad():
            model(**_inputs(model))
        recorder.remove()
        recorder.collect().save(tmp_path / f"{name}.safetensors")
        files.append(load_stats(tmp_path / f"{name}.safetensors"))
    a, b = files
    assert a.tensors.keys() == b.tensors.keys() and (a.threshold, a.runs) == (b.threshold, b.runs)
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "tiny-flux")


def test_apply_record_stats_accumulates_runs(weights, tmp_path):
    stats_file = tmp_path / "stats.safetensors"
    args = ["apply", str(_plan(tmp_path)), "--weights", str(weights), "--prompt", "a cat",
            "--steps", "2", "-o", str(tmp_path / "o.png"), "--device", "cpu",
            "--record-stats", str(stats_file)]
    for _ in range(2):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        one = load_stats(stats_file)
        if one.runs == 1:
            first = {k: v.clone() for k, v in one.tensors.items()}
    assert one.runs == 2
    # the same seed twice: every count and sum exactly doubles
    assert all(torch.equal(v, 2 * first[k]) for k, v in one.tensors.items())
    # 8 blocks; 3 double blocks with two MLPs, 5 single blocks with one
    assert sum(k.endswith("/active") for k in one.tensors) == 3 * 2 + 5
    assert sum(k.startswith("residual/") for k in one.tensors) == 8


def test_apply_refuses_a_file_that_holds_no_statistics(weights, tmp_path):
    bad = tmp_path / "other.safetensors"
    bad.write_text(json.dumps({"not": "safetensors"}))
    out = tmp_path / "never.png"
    result = CliRunner().invoke(app, [
        "apply", str(_plan(tmp_path)), "--weights", str(weights), "--prompt", "a cat",
        "-o", str(out), "--device", "cpu", "--record-stats", str(bad)])
    assert result.exit_code == 2, result.output
    assert len([l for l in result.output.splitlines() if l.startswith("error:")]) == 1
    assert "--record-stats" in result.output and not out.exists()


def test_least_active_units_are_the_rarest_and_prune_to_the_model_without_them():
    """The statistics choose the units, the plan's pruning removes them: the pruned block's
    output equals the block with those units' down-projection columns zeroed (the units then
    contribute nothing), up to float rounding of the shorter sums."""
    from runtime.analysis.pruning import prune_units

    model = build_tiny_flux()
    recorder = record_stats(model)
    with torch.no_grad():
        model(**_inputs(model))
    recorder.remove()
    stats = recorder.collect()
    key = ("transformer_blocks.0", "ff.net.2")
    chosen = stats.least_active(*key, 16)
    fraction = stats.active_fraction(*key)
    assert len(chosen) == 16 and max(fraction[list(chosen)]) <= min(
        fraction[[i for i in range(128) if i not in chosen]])
    block = model.transformer_blocks[0]
    inputs = get_family("flux").block_inputs(model, "double", WORKLOAD, "cpu", torch.float32)
    zeroed = __import__("copy").deepcopy(block)
    zeroed.ff.net[2].weight.data[:, list(chosen)] = 0
    prune_units(block, "ff.net.2", chosen)
    with torch.no_grad():
        got = block(*inputs.args, **inputs.kwargs)
        want = zeroed(*inputs.args, **inputs.kwargs)
    assert all(torch.allclose(g, w, rtol=1e-5, atol=1e-6) for g, w in zip(got, want))
    assert block.ff.net[2].in_features == 128 - 16
