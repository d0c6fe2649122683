"""HunyuanVideo specifics the family contract suite does not cover: the three block lists in
execution order, token counts from the VAE and the patching, sizes the pipeline would round,
guidance as HunyuanVideoPipeline runs it, the issue's 16 GB example, and original files that
share FLUX.1's block names.

The shared tests (tests/test_family_contract.py) run tiny-hunyuanvideo through everything
downstream.
"""

from __future__ import annotations

import json
import types

import pytest
import torch
from typer.testing import CliRunner

from planner.cli import app
from runtime.catalog import get_model
from runtime.dtypes import DType
from runtime.inventory import inventory

runner = CliRunner()


@pytest.mark.parametrize(
    "model_id, size, frames, grid",
    [
        # 61 frames -> 16 latent frames; 848x480 / 8 / 2 -> 53 x 30
        ("hunyuanvideo", "848x480", 61, (16, 30, 53)),
        ("hunyuanvideo", "1280x720", 129, (33, 45, 80)),
        ("tiny-hunyuanvideo", "64x64", 5, (2, 4, 4)),
    ],
)
def test_tokens_from_the_vae_and_the_patching(model_id, size, frames, grid):
    from runtime.families.hunyuan_video import token_grid, video_tokens_of

    workload = get_model(model_id).workload(size, frames=frames)
    config = types.SimpleNamespace(**get_model(model_id).config)
    assert token_grid(config, workload) == grid
    assert video_tokens_of(config, workload) == grid[0] * grid[1] * grid[2]


def test_every_block_list_in_execution_order():
    """The token refiner runs first (inside `context_embedder`, on the text), then the dual-
    and the single-stream blocks."""
    inv = inventory("hunyuanvideo", DType.BF16)
    refiner = [f"context_embedder.token_refiner.refiner_blocks.{i}" for i in range(2)]
    double = [f"transformer_blocks.{i}" for i in range(20)]
    single = [f"single_transformer_blocks.{i}" for i in range(40)]
    assert [b.name for b in inv.blocks] == refiner + double + single
    assert [b.kind for b in inv.blocks] == ["refiner"] * 2 + ["double"] * 20 + ["single"] * 40
    params = {kind: {b.params for b in inv.blocks if b.kind == kind} for kind in ("refiner", "double", "single")}
    assert params == {"refiner": {132_166_656}, "double": {339_831_296}, "single": {141_591_808}}
    assert inv.total_params == 12_821_012_544
    assert 25.6e9 <= inv.total_bytes < 25.7e9  # bf16


def test_unusable_frames_exit_2_with_one_line(tmp_path):
    out = tmp_path / "plan.json"
    db = f"sqlite:///{tmp_path / 'store.db'}"
    result = runner.invoke(app, ["tune", "--model", "hunyuanvideo", "--frames", "60",
                                 "--vram", "16GB", "--gpu", "rtx-4080", "--db", db,
                                 "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    for word in ("frames 60", "4k+1", "give 57 or 61"):
        assert word in result.stderr
    assert not out.exists()


def test_the_pipeline_runs_one_guidance_embedded_forward_per_step():
    """The catalog's CFG mode is the pipeline's: the released model is guidance-distilled, so
    each step is one forward of batch 1 taking the guidance scale x 1000 as an input."""
    from runtime.families import get_family
    from tests.family_support.hunyuan_video import build_tiny_pipeline

    spec = get_model("tiny-hunyuanvideo")
    workload = spec.workload("64x64", frames=5)
    pipe = build_tiny_pipeline()
    seen = []
    pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((kwargs["hidden_states"].shape,
                                                  kwargs["guidance"].tolist())),
        with_kwargs=True,
    )
    kwargs = get_family("hunyuan-video").prompt_kwargs(
        pipe, "a cat", workload, spec.default_guidance, "cpu"
    )
    assert kwargs["prompt_embeds"].shape[1] == workload.text_tokens
    pipe(**kwargs, num_inference_steps=2, height=64, width=64, output_type="latent")
    assert seen == [(torch.Size([1, 4, 2, 8, 8]), [6000.0])] * 2
    assert workload.forward_batch == 1 and workload.forwards_per_step == 1


def test_hunyuanvideo_at_848x480_61_frames_fits_16gb_on_an_rtx_4080(tmp_path):
    """The issue's example (done-when): a plan within 16 GB that streams part of the 25.6 GB."""
    from planner.budget import parse_size
    from runtime.plan import load_plan

    out = tmp_path / "plan.json"
    result = runner.invoke(app, [
        "tune", "--model", "hunyuanvideo", "--resolution", "848x480", "--frames", "61",
        "--vram", "16GB", "--gpu", "rtx-4080", "--trials", "40",
        "--db", f"sqlite:///{tmp_path / 'store.db'}", "-o", str(out), "--json",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["peak_vram_bytes"] <= parse_size("16GB", "--vram")
    streamed = sum(c["streamed"] for c in data["placement"]["blocks"].values())
    assert 0 < streamed < 62
    assert load_plan(out).model.id == "hunyuanvideo"


def test_original_file_under_the_comfyui_prefix_is_hunyuanvideo_not_flux(tmp_path):
    from safetensors.torch import save_file

    from runtime.checkpoint.inspect import Naming, inspect_checkpoint
    from runtime.checkpoint.load import load_transformer
    from tests.family_support.hunyuan_video import build_tiny_pipeline, to_original

    transformer = build_tiny_pipeline().transformer
    state = {k: v.contiguous() for k, v in transformer.state_dict().items()}
    tensors = to_original(dict(state), prefix="model.diffusion_model.")
    assert "model.diffusion_model.single_blocks.0.linear1.weight" in tensors
    path = tmp_path / "hunyuan_video_tiny.safetensors"
    save_file(tensors, str(path))
    report = inspect_checkpoint(path)
    assert (report.family, report.naming) == ("hunyuan-video", Naming.ORIGINAL)
    assert len(report.blocks) == 7 and report.blocks[0].kind == "refiner"
    config = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    loaded = load_transformer(path, config, family="hunyuan-video").state_dict()
    assert sorted(loaded) == sorted(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_flux_files_are_not_claimed_by_hunyuanvideo(tmp_path):
    """FLUX.1's blocks are spelled as HunyuanVideo's in both namings; without a token refiner
    a file is not HunyuanVideo's."""
    from safetensors.torch import save_file

    from runtime.checkpoint.inspect import inspect_checkpoint
    from runtime.families import get_family
    from tests.bfl_format import to_bfl
    from tests.pipeline_fixtures import build_tiny_pipeline

    state = {k: v.contiguous() for k, v in build_tiny_pipeline().transformer.state_dict().items()}
    for name, tensors in (("diffusers", state), ("bfl", to_bfl(dict(state)))):
        assert get_family("hunyuan-video").claims(list(tensors)) == 0, name
        path = tmp_path / f"{name}.safetensors"
        save_file(tensors, str(path))
        assert inspect_checkpoint(path).family == "flux", name


def test_planner_apply_in_bf16_writes_every_frame(tmp_path):
    from PIL import Image

    from runtime.plan import Target, build_plan, save_plan
    from tests.family_support.hunyuan_video import build_tiny_pipeline

    build_tiny_pipeline().save_pretrained(tmp_path / "pipe", safe_serialization=True)
    inv = inventory("tiny-hunyuanvideo", DType.BF16)
    plan = build_plan(inv, {b.name for b in inv.blocks[1::2]},
                      workload=get_model("tiny-hunyuanvideo").workload("64x64", frames=5),
                      target=Target("cpu", 1 << 30), prefetch_depth=2)
    save_plan(plan, tmp_path / "plan.json")
    out = tmp_path / "clip.gif"
    result = runner.invoke(app, [
        "apply", str(tmp_path / "plan.json"), "--weights", str(tmp_path / "pipe"),
        "--prompt", "a red cat", "--steps", "2", "--frames", "9", "-o", str(out),
        "--device", "cpu", "--db", f"sqlite:///{tmp_path / 'store.db'}",
    ])
    assert result.exit_code == 0, result.output
    with Image.open(out) as clip:
        assert (clip.size, clip.n_frames) == ((64, 64), 9)


def test_decode_is_the_pipelines_own():
    """`decode` of the pipeline's latents gives the frames HunyuanVideoPipeline returns."""
    import numpy as np

    from runtime.families import get_family
    from tests.family_support.hunyuan_video import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    adapter, workload = get_family("hunyuan-video"), get_model("tiny-hunyuanvideo").workload("64x64")
    kwargs = adapter.prompt_kwargs(pipe, "a cat", workload, 6.0, "cpu")
    run = dict(kwargs, num_inference_steps=2, height=64, width=64, return_dict=False)
    frames = pipe(**run, output_type="pil", generator=torch.Generator().manual_seed(0))[0][0]
    latents = pipe(**run, output_type="latent", generator=torch.Generator().manual_seed(0))[0]
    decoded = adapter.decode(pipe, latents, workload)
    assert len(decoded) == len(frames) == 5
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(decoded, frames))
