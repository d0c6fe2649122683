"""SDXL and SD 1.5 UNets beyond the family contract: skip tensors under streaming, the
released models' block layout and both namings, and the issue's 4 GB SDXL plan.

tests/test_family_contract.py runs the shared suite on tiny-sdxl and tiny-sd15; here are the
UNet's own cases: a down block's outputs are kept as skips until an up block takes them, so
every block is streamed alone and kept alone at every depth, bitwise against the plain model.
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
from runtime.plan import Target, build_plan
from runtime.random_weights import random_model
from tests.family_support.unet import to_original

ADAPTER_NAME = "unet"


def _forward(model, workload):
    inputs = get_family(ADAPTER_NAME).model_inputs(model, workload, "cpu", torch.float32)
    with torch.no_grad():
        return model(**inputs)[0]


def test_down_blocks_streamed_alone_and_kept_alone_are_bitwise_equal():
    """A streamed down block whose skips resident up blocks take, and a resident down block
    whose skips streamed up blocks take, at depths 1-3 (the contract test adds the
    streamed/spread/prefix/suffix mixes on both tiny UNets)."""
    from runtime.apply import apply_plan

    model_id = "tiny-sdxl"
    workload = get_model(model_id).workload("64x64")
    expected = _forward(random_model(model_id), workload)
    inv = inventory(model_id)
    names = [b.name for b in inv.blocks]
    downs = [n for n in names if n.startswith("down_blocks.")]
    model = random_model(model_id)
    for streamed in [{n} for n in downs] + [set(names) - {n} for n in downs]:
        for depth in (1, 2, 3):
            plan = build_plan(inv, streamed, workload=workload, target=Target("cpu", 1 << 30),
                              prefetch_depth=depth)
            handle = apply_plan(model, plan, "cpu")
            try:
                assert torch.equal(_forward(model, workload), expected), (sorted(streamed), depth)
                assert handle.resyncs == 0
            finally:
                handle.remove()


def test_blocks_run_in_the_forwards_order_and_skips_stay_activations():
    """Block hooks fire down, mid, up; no skip tensor an up block receives shares storage with
    a parameter (so a ring slot refilled under it cannot change it)."""
    model = random_model("tiny-sdxl")
    adapter = get_family(ADAPTER_NAME)
    order, skips = [], []
    hooks = []
    for name, _, block in adapter.blocks(model):
        def pre(module, args, kwargs, name=name):
            order.append(name)
            skips.extend(kwargs.get("res_hidden_states_tuple", ()))
        hooks.append(block.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        _forward(model, get_model("tiny-sdxl").workload("64x64"))
    finally:
        for hook in hooks:
            hook.remove()
    assert order == [name for name, _, _ in adapter.blocks(model)]
    assert order[0] == "down_blocks.0" and order[3] == "mid_block" and order[-1] == "up_blocks.2"
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(skips) == 3 * 3 and not weights & {s.untyped_storage().data_ptr() for s in skips}


@pytest.mark.parametrize("model_id, blocks", [
    ("sdxl", ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block",
              "up_blocks.0", "up_blocks.1", "up_blocks.2"]),
    ("sd1.5", [f"down_blocks.{i}" for i in range(4)] + ["mid_block"]
              + [f"up_blocks.{i}" for i in range(4)]),
])
def test_released_layouts_map_and_convert_in_both_namings(model_id, blocks):
    """On `meta`: the released UNet's tensors in LDM names map to the same blocks as in
    diffusers names, and diffusers' converter gives every tensor back."""
    adapter = get_family(ADAPTER_NAME)
    model = adapter.build(get_model(model_id).config, device="meta")
    state = model.state_dict()
    assert [b.name for b in inventory(model_id).blocks] == blocks
    original = to_original(dict(state))
    assert sorted({adapter.block_of_tensor(n) for n in original} - {None}) == sorted(blocks)
    for name in state:
        ldm = next(k for k, v in original.items() if v is state[name])
        assert adapter.block_of_tensor(ldm) == adapter.block_of_tensor(name), (ldm, name)
    unprefixed = {k.removeprefix("model.diffusion_model."): v for k, v in original.items()}
    converted = adapter.convert_original(unprefixed, {k: tuple(v.shape) for k, v in state.items()})
    assert sorted(converted) == sorted(state) and not unprefixed
    assert all(converted[name] is tensor for name, tensor in state.items())


@pytest.mark.parametrize("name", [
    "transformer_blocks.0.attn.to_q.weight", "double_blocks.3.img_attn.qkv.weight",
    "model.diffusion_model.single_blocks.1.linear1.weight", "encoder.down_blocks.0.resnets.0.conv1.weight",
    "decoder.mid_block.attentions.0.to_q.weight", "first_stage_model.decoder.up.0.block.0.conv1.weight",
    "model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight",
    "time_embedding.linear_1.weight", "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
])
def test_names_outside_the_unets_blocks_are_not_claimed(name):
    assert get_family(ADAPTER_NAME).block_of_tensor(name) is None


def test_other_families_do_not_claim_unet_names():
    from runtime.families import families

    names = ["down_blocks.1.attentions.0.proj_in.weight", "mid_block.resnets.0.conv1.weight",
             "model.diffusion_model.input_blocks.4.1.proj_in.weight",
             "model.diffusion_model.middle_block.1.proj_out.weight",
             "model.diffusion_model.output_blocks.8.0.skip_connection.weight"]
    for family in families():
        if family != ADAPTER_NAME:
            assert all(get_family(family).block_of_tensor(n) is None for n in names), family


def test_sdxl_tune_at_4gb_on_an_rtx_3060_writes_a_plan_that_fits(tmp_path):
    plan_file = tmp_path / "plan.json"
    result = CliRunner().invoke(app, [
        "tune", "--model", "sdxl", "--vram", "4GB", "--gpu", "rtx-3060", "--trials", "40",
        "--db", f"sqlite:///{tmp_path / 'store.db'}", "-o", str(plan_file),
    ])
    assert result.exit_code == 0, result.output
    plan = json.loads(plan_file.read_text())
    assert plan["workload"]["cfg"] == "batched" and plan["workload"]["batch"] == 1
    assert plan["predictions"]["peak_vram_bytes"] <= 4 * 2**30
    placements = {b["name"]: b["placement"] for b in plan["blocks"]}
    assert placements["up_blocks.0"] == "streamed"  # 1.2B params, 2.4 GB: cannot stay


def test_search_finds_the_exhaustive_best_for_sd15():
    """Nine one-block kinds: the analytic pass covers every subset (patterns coincide), so the
    search's plan is the best of the whole space."""
    from planner.search import Settings, exhaustive, search
    from profiler.reference import reference_profile
    from runtime.workload import CfgMode

    inv = inventory("sd1.5")
    workload = get_model("sd1.5").workload("512x512")
    profiles = {CfgMode.BATCHED: reference_profile("rtx-3060", "sd1.5", workload)}
    budget = 2 * 2**30
    best, _ = exhaustive(inv, profiles, budget)
    assert search(inv, profiles, Settings(budget, trials=20)).best.step_ms == best.step_ms
