"""HunyuanImage 2.1 beyond the family contract: blocks listed in the order the forward runs
them (refiner first), CFG as two forwards per step, Tencent's fused q/k/v naming, and FLUX
files (whose block names HunyuanImage shares) never taken for HunyuanImage."""

from __future__ import annotations

import torch

from runtime.catalog import get_model
from runtime.families import get_family
from runtime.random_weights import random_model
from runtime.workload import CfgMode
from tests.family_support.hunyuan_image import build_tiny_pipeline, to_original


def test_blocks_are_listed_in_the_order_the_forward_runs_them():
    adapter = get_family("hunyuan-image")
    model = random_model("tiny-hunyuanimage")
    ran = []
    hooks = [block.register_forward_pre_hook(lambda *_, name=name: ran.append(name))
             for name, _, block in adapter.blocks(model)]
    workload = get_model("tiny-hunyuanimage").workload("64x64")
    try:
        with torch.no_grad():
            model(**adapter.model_inputs(model, workload, "cpu", torch.float32))
    finally:
        for hook in hooks:
            hook.remove()
    assert ran == [name for name, _, _ in adapter.blocks(model)]
    assert ran[0].startswith("context_embedder.token_refiner.refiner_blocks.")
    assert get_model("hunyuanimage-2.1").workload().text_tokens == 1000 + 128


def _forward_batches(pipe, kwargs, steps: int) -> list[int]:
    batches = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda _, args, kw: batches.append(kw["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        pipe(**kwargs, num_inference_steps=steps, height=64, width=64, output_type="latent",
             generator=torch.Generator("cpu").manual_seed(0))
    finally:
        hook.remove()
    return batches


def test_the_guider_runs_two_forwards_per_step_as_the_catalog_says():
    assert get_model("hunyuanimage-2.1").cfg is CfgMode.SEQUENTIAL
    pipe = build_tiny_pipeline()
    adapter = get_family("hunyuan-image")
    workload = get_model("tiny-hunyuanimage").workload("64x64")
    cpu = torch.device("cpu")
    kwargs = adapter.prompt_kwargs(pipe, "a cat on the mat", workload, 3.5, cpu)
    assert pipe.guider.guidance_scale == 3.5 and pipe.guider._enabled
    assert _forward_batches(pipe, kwargs, 2) == [1, 1, 1, 1]
    off = adapter.prompt_kwargs(pipe, "a cat on the mat", workload, 1.0, cpu)
    assert "negative_prompt_embeds" not in off
    assert _forward_batches(pipe, off, 2) == [1, 1]


def test_tencent_file_with_fused_qkv_loads_bitwise(tmp_path):
    from safetensors.torch import save_file

    from runtime.checkpoint.inspect import Naming, inspect_checkpoint
    from runtime.checkpoint.load import load_transformer

    model = random_model("tiny-hunyuanimage")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    original = to_original(state, prefix="model.diffusion_model.")
    fused = {}
    for name in list(original):  # the fused form: double blocks' qkv, single blocks' linear1
        for part, kinds in (("img_attn_", "qkv"), ("txt_attn_", "qkv"), ("linear1_", "qkv")):
            if f".{part}q." in name:
                parts = [name.replace(f".{part}q.", f".{part}{x}.") for x in kinds]
                if part == "linear1_":
                    parts.append(name.replace(".linear1_q.", ".linear1_mlp."))
                target = name.replace(f".{part}q.", ".linear1." if part == "linear1_" else f".{part}qkv.")
                fused[target] = torch.cat([original.pop(p) for p in parts], dim=0)
    for name in [n for n in original if ".linear2.fc." in n]:
        fused[name.replace(".linear2.fc.", ".linear2.")] = original.pop(name)
    fused |= original
    assert any(".img_attn_qkv." in n for n in fused) and any(".linear1.weight" in n for n in fused)
    path = tmp_path / "hunyuanimage2.1.safetensors"
    save_file(fused, str(path))
    report = inspect_checkpoint(path)
    assert (report.family, report.naming) == ("hunyuan-image", Naming.ORIGINAL)
    config = dict(get_model("tiny-hunyuanimage").config)
    got = load_transformer(path, config, family="hunyuan-image").state_dict()
    assert sorted(got) == sorted(state)
    assert all(torch.equal(got[k], v) for k, v in state.items())


def test_a_flux_file_is_flux_even_where_a_hunyuan_like_family_sorts_first(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from runtime import families
    from runtime.checkpoint.inspect import inspect_checkpoint
    from runtime.families.hunyuan_image import HunyuanImageAdapter

    flux = random_model("tiny-flux").state_dict()
    hunyuan = get_family("hunyuan-image")
    block_names = [n for n in flux if get_family("flux").block_of_tensor(n)]
    assert all(hunyuan.block_of_tensor(n) for n in block_names)  # the same names: a tie

    class SortsFirst(HunyuanImageAdapter):
        name = "a-hunyuan-copy"

    families._load_builtins()
    monkeypatch.setitem(families._REGISTRY, SortsFirst.name, SortsFirst())
    path = tmp_path / "flux.safetensors"
    save_file({k: v.contiguous() for k, v in flux.items()}, str(path))
    assert inspect_checkpoint(path).family == "flux"
    hunyuan_file = tmp_path / "hunyuan.safetensors"
    save_file({k: v.contiguous() for k, v in random_model("tiny-hunyuanimage").state_dict().items()},
              str(hunyuan_file))
    assert inspect_checkpoint(hunyuan_file).family == "a-hunyuan-copy"  # ties with hunyuan-image



def test_tune_plans_cfg_as_the_pipeline_runs_it():
    from planner.app.request import TuneRequest
    from planner.app.tune import tune

    spec = get_model("hunyuanimage-2.1")
    request = TuneRequest(  # at 1024x1024 within 16 GB, one batched forward would be faster
        model_id=spec.id, budget_bytes=16 << 30, workload=spec.workload("1024x1024"),
        storage_dtype=spec.storage_dtype, gpu="rtx-4080", trials=20, db_url="sqlite://",
    )
    assert tune(request).plan.workload.cfg is CfgMode.SEQUENTIAL


def test_tune_plans_at_the_models_own_resolution(tmp_path):
    import json

    from typer.testing import CliRunner

    from planner.cli import app

    plan_file = tmp_path / "plan.json"
    result = CliRunner().invoke(app, [
        "tune", "--model", "hunyuanimage-2.1", "--vram", "16GB", "--gpu", "rtx-4080",
        "--trials", "5", "--db", f"sqlite:///{tmp_path / 'store.db'}", "-o", str(plan_file),
    ])
    assert result.exit_code == 0, result.output
    workload = json.loads(plan_file.read_text())["workload"]
    assert (workload["width"], workload["height"]) == (2048, 2048)
