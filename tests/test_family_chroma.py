"""Chroma beyond the family contract: the released inventory, the approximator outside the
blocks, true CFG counted as two forwards, and a model loaded from an original single file
that runs (its non-persistent `mod_proj` buffer real, not left on `meta`).

Chroma1-HD is FLUX.1 [schnell] at width d = 3072 with the modulation pruned from every block:
a double block is q/k/v/out for both streams (8 d^2 + 8d biases), two GELU feed-forwards with
biases (2 x (8 d^2 + 5d)) and four 128-wide norms; a single block is q/k/v and the 4x mlp in
(7 d^2 + 7d) and the output (5d x d + d) with two norms.
"""

from __future__ import annotations

import torch

from runtime.catalog import get_model
from runtime.families import get_family
from runtime.inventory import inventory
from runtime.random_weights import random_model
from runtime.workload import CfgMode

D = 3072
DOUBLE_PARAMS = 8 * D * D + 8 * D + 2 * (8 * D * D + 5 * D) + 4 * 128
SINGLE_PARAMS = 7 * D * D + 7 * D + 5 * D * D + D + 2 * 128
# approximator: in 64 -> 5120, 5 residual MLPs (5120 -> 5120 -> 5120) with RMS norms, out -> d
APPROXIMATOR = (64 * 5120 + 5120) + 5 * (2 * (5120 * 5120 + 5120) + 5120) + (5120 * D + D)
# its timestep input table (3 x 38 + 12 x 19 + 2 rows of 32), a buffer outside the checkpoint
MOD_PROJ = (3 * 38 + 12 * 19 + 2) * 32


def test_chroma_inventory_is_the_released_model():
    inv = inventory("chroma")
    assert [b.kind for b in inv.blocks] == ["double"] * 19 + ["single"] * 38
    assert {b.params for b in inv.blocks if b.kind == "double"} == {DOUBLE_PARAMS} == {226_548_224}
    assert {b.params for b in inv.blocks if b.kind == "single"} == {SINGLE_PARAMS} == {113_271_040}
    embedders = (4096 * D + D) + (64 * D + D) + (D * 64 + 64)  # context, x, proj_out
    assert inv.non_block_params == APPROXIMATOR + embedders + MOD_PROJ
    assert APPROXIMATOR == 278_285_312
    assert inv.total_params - MOD_PROJ == 8_899_983_424  # the checkpoint's parameters


def test_the_approximator_is_non_block():
    adapter = get_family("chroma")
    model = adapter.build(get_model("chroma").config, "meta")
    in_blocks = {id(p) for _, _, b in adapter.blocks(model) for p in b.parameters()}
    params = list(model.distilled_guidance_layer.parameters())
    assert params and not any(id(p) in in_blocks for p in params)
    assert all(p.is_meta for p in model.parameters())


def test_true_cfg_is_two_forwards_per_step():
    from planner.costmodel import CostModel, Layout
    from profiler.reference import reference_profile
    from runtime.plan import CastMode, HostMemory

    spec = get_model("chroma")
    assert spec.cfg is CfgMode.SEQUENTIAL
    inv = inventory("chroma")
    layout = Layout.uniform([False] * len(inv.blocks), CastMode.PRE, 2, HostMemory.PINNED)
    two = CostModel(inv, reference_profile("rtx-4090", "chroma", spec.workload()))
    one = CostModel(inv, reference_profile("rtx-4090", "chroma", spec.workload(cfg=CfgMode.NONE)))
    assert two.step_ms(layout) > 1.9 * one.step_ms(layout)


def test_original_file_under_the_comfyui_prefix_loads_and_runs(tmp_path):
    """Loaded onto `meta` and assigned the file's tensors, the model still has a real
    `mod_proj` (diffusers' own value) and gives the plain model's output bit for bit."""
    from safetensors.torch import save_file

    from runtime.checkpoint.inspect import Naming, inspect_checkpoint
    from runtime.checkpoint.load import load_transformer
    from tests.family_support.chroma import build_tiny_pipeline, to_original

    plain = build_tiny_pipeline().transformer
    state = {k: v.contiguous() for k, v in plain.state_dict().items()}
    path = tmp_path / "chroma.safetensors"
    save_file(to_original(state, prefix="model.diffusion_model."), str(path))
    report = inspect_checkpoint(path)
    assert (report.family, report.naming) == ("chroma", Naming.ORIGINAL)
    loaded = load_transformer(path, dict(plain.config), family="chroma")
    assert torch.equal(loaded.time_text_embed.mod_proj, plain.time_text_embed.mod_proj)
    adapter = get_family("chroma")
    workload = get_model("tiny-chroma").workload("64x64")
    with torch.no_grad():
        want = plain(**adapter.model_inputs(plain, workload, "cpu", torch.float32))[0]
        got = loaded(**adapter.model_inputs(loaded, workload, "cpu", torch.float32))[0]
    assert torch.equal(got, want)


def test_padding_is_masked_as_the_pipeline_masks_it():
    """Text tokens past the prompt and its first padding token are masked; image tokens not."""
    adapter = get_family("chroma")
    model = random_model("tiny-chroma")
    workload = get_model("tiny-chroma").workload("64x64")
    mask = adapter.model_inputs(model, workload, "cpu", torch.float32)["attention_mask"]
    text = workload.text_tokens
    assert mask.shape == (1, text + 16)
    assert mask[0, :text].tolist() == [1.0] * (text // 4 + 1) + [0.0] * (text - text // 4 - 1)
    assert mask[0, text:].eq(1).all()
