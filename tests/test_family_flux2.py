"""FLUX.2 beyond the family contract: the released inventory, block inputs as the model's own
forward makes them, telling FLUX.1 / FLUX.2 / Chroma files apart, and the issue's tune.

FLUX.2 [dev] (width d = 48 x 128 = 6144, mlp ratio 3, no biases): a double block is
q/k/v/out for both streams (8 d^2), two SwiGLU feed-forwards (2 x 9 d^2) and four 128-wide
RMS norms; a single block is the fused q/k/v/mlp projection (d x 9d) and its output (4d x d)
with two norms. The three shared modulation modules sit outside every block.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from planner.cli import app
from runtime.catalog import get_model
from runtime.families import get_family
from runtime.inventory import inventory
from runtime.random_weights import random_model
from tests.family_support import support

D = 6144
DOUBLE_PARAMS = 26 * D * D + 4 * 128  # 981,467,648
SINGLE_PARAMS = 13 * D * D + 2 * 128  # 490,733,824
# time + guidance embedders, 3 shared modulations (6d, 6d, 3d wide), x/context embedders,
# final adaLN (2d) and projection
NON_BLOCK = 2 * (256 * D + D * D) + 15 * D * D + 128 * D + 15360 * D + 2 * D * D + D * 128
runner = CliRunner()


def test_flux2_dev_inventory_is_the_released_model():
    inv = inventory("flux2-dev")
    assert [b.kind for b in inv.blocks] == ["double"] * 8 + ["single"] * 48
    assert {b.params for b in inv.blocks if b.kind == "double"} == {DOUBLE_PARAMS} == {981_467_648}
    assert {b.params for b in inv.blocks if b.kind == "single"} == {SINGLE_PARAMS} == {490_733_824}
    assert inv.non_block_params == NON_BLOCK == 816_316_416
    assert inv.total_params == 32_223_281_152
    assert inv.total_bytes == 2 * inv.total_params  # bf16, no buffers


def test_shared_modulation_is_non_block():
    model = get_family("flux2").build(get_model("flux2-dev").config, "meta")
    in_blocks = {id(p) for _, _, b in get_family("flux2").blocks(model) for p in b.parameters()}
    for name in ("double_stream_modulation_img", "double_stream_modulation_txt",
                 "single_stream_modulation"):
        params = list(model.get_submodule(name).parameters())
        assert params and not any(id(p) in in_blocks for p in params), name


def _captured_block_kwargs(model, adapter, workload):
    """The keyword arguments the model's own forward passes to the first block of each kind."""
    seen = {}
    hooks = []
    for name, kind, block in adapter.blocks(model):
        if kind not in seen:
            seen[kind] = None
            hooks.append(block.register_forward_pre_hook(
                lambda module, args, kwargs, kind=kind: seen.__setitem__(kind, (args, kwargs)),
                with_kwargs=True,
            ))
    try:
        with torch.no_grad():
            model(**adapter.model_inputs(model, workload, "cpu", torch.float32))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _shape_tree(value):
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype)
    if isinstance(value, (tuple, list)):
        return tuple(_shape_tree(v) for v in value)
    return value


@pytest.mark.parametrize("model_id", ["tiny-flux2", "tiny-chroma"])
@pytest.mark.parametrize("resolution", ["64x64", "96x48"])
def test_block_inputs_are_what_the_forward_passes(model_id, resolution):
    """Same arguments, shapes and dtypes; the rotary tables (and Chroma's mask) equal."""
    spec = get_model(model_id)
    adapter = get_family(spec.family)
    model = random_model(model_id)
    workload = spec.workload(resolution)
    for kind, (args, kwargs) in _captured_block_kwargs(model, adapter, workload).items():
        made = adapter.block_inputs(model, kind, workload, "cpu", torch.float32)
        assert not args and not made.args
        passed = {k: v for k, v in kwargs.items() if k != "joint_attention_kwargs"}
        assert set(made.kwargs) == set(passed), kind
        for key, value in passed.items():
            assert _shape_tree(made.kwargs[key]) == _shape_tree(value), (kind, key)
        for got, want in zip(made.kwargs["image_rotary_emb"], passed["image_rotary_emb"]):
            assert torch.equal(got, want), kind
        if "attention_mask" in passed:
            assert torch.equal(made.kwargs["attention_mask"], passed["attention_mask"])


def _files(family: str, tmp_path):
    """The family's tiny transformer written in diffusers naming, original naming, and
    original naming under ComfyUI's prefix."""
    from safetensors.torch import save_file

    pipe_support = support(family)
    model_id = pipe_support.TINY_MODELS[0]
    state = {k: v.contiguous() for k, v in random_model(model_id).state_dict().items()}
    if family == "flux":
        from tests.bfl_format import to_bfl as to_original
    else:
        to_original = pipe_support.to_original
    files = {
        "diffusers": state,
        "original": to_original(dict(state)),
        "comfyui": to_original(dict(state), prefix="model.diffusion_model."),
    }
    paths = {}
    for naming, tensors in files.items():
        paths[naming] = tmp_path / f"{family}-{naming}.safetensors"
        save_file(tensors, str(paths[naming]))
    return paths


@pytest.mark.parametrize("family", ["flux", "flux2", "chroma"])
def test_inspect_tells_flux_flux2_and_chroma_apart(family, tmp_path):
    from runtime.checkpoint.inspect import Naming, inspect_checkpoint

    for naming, path in _files(family, tmp_path).items():
        report = inspect_checkpoint(path)
        assert report.family == family, naming
        expected = Naming.DIFFUSERS if naming == "diffusers" else Naming.ORIGINAL
        assert report.naming is expected, naming


def test_original_flux2_file_under_the_comfyui_prefix_loads_and_runs(tmp_path):
    from runtime.checkpoint.load import load_transformer

    path = _files("flux2", tmp_path)["comfyui"]
    plain = random_model("tiny-flux2")
    config = dict(get_model("tiny-flux2").config)
    loaded = load_transformer(path, config, family="flux2")
    adapter = get_family("flux2")
    workload = get_model("tiny-flux2").workload("64x64")
    with torch.no_grad():
        want = plain(**adapter.model_inputs(plain, workload, "cpu", torch.float32))[0]
        got = loaded(**adapter.model_inputs(loaded, workload, "cpu", torch.float32))[0]
    assert torch.equal(got, want)


def test_a_flux2_file_given_as_flux_is_refused(tmp_path):
    from runtime.checkpoint.load import load_transformer
    from runtime.errors import CheckpointError

    path = _files("flux2", tmp_path)["original"]
    with pytest.raises(CheckpointError, match="holds a flux2 model, not flux"):
        load_transformer(path, dict(get_model("tiny-flux").config), family="flux")


def test_issue_tune_flux2_dev_on_a_24gb_4090(tmp_path):
    """The issue's done-when: a plan that fits 24 GB, with the peers compared."""
    from runtime.plan import load_plan

    out = tmp_path / "plan.json"
    args = ["tune", "--model", "flux2-dev", "--vram", "24GB", "--gpu", "rtx-4090",
            "--db", f"sqlite:///{tmp_path / 'store.db'}", "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    plan = load_plan(out)
    assert plan.model.id == "flux2-dev"
    assert plan.predictions.peak_vram_bytes <= 24 * 2**30
    assert 0 < len(plan.streamed) < 56  # 64 GB of weights: some stream, some stay
    for peer in ("stream-all", "resident-prefix", "largest-first", "smallest-first", "spread"):
        assert peer in result.output
    again = runner.invoke(app, args[:-2] + ["--json"])
    assert again.exit_code == 0, again.output
    data = json.loads(again.stdout)
    assert data["plan"]["model"]["id"] == "flux2-dev" and len(data["policies"]) >= 5
    assert all(data["step_ms"] <= p["step_ms"] + 1e-9 for p in data["policies"] if p["fits"])
