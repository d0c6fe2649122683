"""Qwen-Image beyond the family contract: true CFG as two forwards per step (pipeline, cost
model), ComfyUI's single file (diffusers names under `model.diffusion_model.`), and names
FLUX and Qwen-Image share under `transformer_blocks.N.` not mis-detected."""

from __future__ import annotations

import torch

from runtime.catalog import get_model
from runtime.dtypes import DType
from runtime.families import get_family
from runtime.workload import CfgMode
from tests.family_support.qwen_image import build_tiny_pipeline


def test_the_pipeline_runs_two_transformer_forwards_per_step_as_the_catalog_says():
    spec = get_model("qwen-image")
    assert spec.cfg is CfgMode.SEQUENTIAL and spec.workload().forwards_per_step == 2
    pipe = build_tiny_pipeline()
    adapter = get_family("qwen-image")
    workload = get_model("tiny-qwen-image").workload("64x64")
    kwargs = adapter.prompt_kwargs(pipe, "a cat on the mat", workload, 4.0, torch.device("cpu"))
    assert kwargs["negative_prompt_embeds"].shape[-1] == kwargs["prompt_embeds"].shape[-1]
    batches = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda _, args, kw: batches.append(kw["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        pipe(**kwargs, num_inference_steps=3, height=64, width=64, output_type="latent",
             generator=torch.Generator("cpu").manual_seed(0))
    finally:
        hook.remove()
    assert batches == [1] * 6  # cond and uncond one after the other, batch 1 each

    off = adapter.prompt_kwargs(pipe, "a cat", workload, 1.0, torch.device("cpu"))
    assert "negative_prompt_embeds" not in off and off["true_cfg_scale"] == 1.0


def test_the_cost_model_counts_both_forwards():
    from planner.costmodel import CostModel, Layout
    from profiler.reference import reference_profile
    from runtime.inventory import inventory
    from runtime.plan import CastMode, HostMemory

    inv = inventory("qwen-image")
    step = {}
    for cfg in (CfgMode.NONE, CfgMode.SEQUENTIAL):
        workload = get_model("qwen-image").workload(cfg=cfg)
        model = CostModel(inv, reference_profile("rtx-4080", "qwen-image", workload))
        assert model.forwards == workload.forwards_per_step
        layout = Layout.uniform([True] * len(inv.blocks), CastMode.PRE, 2, HostMemory.PINNED)
        step[cfg] = model.step_ms(layout), model.lower_bound_ms(16 << 30)
    for once, twice in zip(step[CfgMode.NONE], step[CfgMode.SEQUENTIAL]):
        assert abs(twice - 2 * once) <= 1e-6 * twice  # every block streams and runs twice


def test_comfyui_single_file_with_diffusers_names_under_its_prefix(tmp_path):
    from safetensors.torch import save_file

    from runtime.checkpoint.inspect import Naming, inspect_checkpoint
    from runtime.checkpoint.load import load_transformer
    from runtime.inventory import inventory
    from runtime.random_weights import random_model

    model = random_model("tiny-qwen-image", DType.FP8)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "qwen_image_fp8_e4m3fn.safetensors"
    save_file({f"model.diffusion_model.{k}": v for k, v in state.items()}, str(path))
    report = inspect_checkpoint(path)
    assert (report.family, report.naming) == ("qwen-image", Naming.DIFFUSERS)
    inv = inventory("tiny-qwen-image", DType.FP8)
    assert [(b.name, b.bytes) for b in report.blocks] == [(b.name, b.bytes) for b in inv.blocks]
    loaded = load_transformer(path, dict(get_model("tiny-qwen-image").config), family="qwen-image")
    got = loaded.state_dict()
    assert sorted(got) == sorted(state)
    assert all(torch.equal(got[k].view(torch.uint8), v.view(torch.uint8)) for k, v in state.items())


def test_flux_and_qwen_image_do_not_claim_each_others_blocks():
    from runtime.random_weights import random_model

    flux, qwen = get_family("flux"), get_family("qwen-image")
    qwen_names = list(random_model("tiny-qwen-image").state_dict())
    flux_names = list(random_model("tiny-flux").state_dict())
    assert qwen.block_of_tensor("transformer_blocks.7.img_mod.1.weight") == "transformer_blocks.7"
    assert flux.block_of_tensor("transformer_blocks.7.img_mod.1.weight") is None
    assert qwen.block_of_tensor("transformer_blocks.7.ff.net.2.weight") is None
    claimed = {
        family: [sum(1 for n in names if a.block_of_tensor(n)) for a in (flux, qwen)]
        for family, names in (("flux", flux_names), ("qwen-image", qwen_names))
    }
    assert claimed["flux"][0] > claimed["flux"][1]
    assert claimed["qwen-image"][1] > claimed["qwen-image"][0]
    assert claimed["qwen-image"][1] == sum(1 for n in qwen_names if n.startswith("transformer_blocks."))


def test_the_issues_tune_writes_a_plan_that_fits_with_peers_compared(tmp_path):
    import json

    from typer.testing import CliRunner

    from planner.cli import app

    plan_file = tmp_path / "plan.json"
    result = CliRunner().invoke(app, [
        "tune", "--model", "qwen-image", "--vram", "16GB", "--gpu", "rtx-4080",
        "--db", f"sqlite:///{tmp_path / 'store.db'}", "-o", str(plan_file), "--json",
    ])
    assert result.exit_code == 0, result.output
    plan = json.loads(plan_file.read_text())
    assert plan["workload"]["cfg"] == "sequential"
    assert 0 < plan["predictions"]["peak_vram_bytes"] <= 16 << 30
    assert any(b["placement"] == "streamed" for b in plan["blocks"])
    summary = json.loads(result.output)
    peers = {p["policy"]: p for p in summary["policies"]}
    assert {"stream-all", "resident-prefix", "spread"} <= set(peers)
    assert all(summary["step_ms"] <= p["step_ms"] for p in peers.values() if p["fits"])
