"""LTX-Video specifics the family contract suite does not cover: token counts from the VAE and
the packed sequence, sizes the pipeline would round, CFG as LTXPipeline runs it, the issue's
12 GB example, and the original single file as ComfyUI loads it (prefixed, VAE inside).

The shared tests (tests/test_family_contract.py) run tiny-ltx-video through everything
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
        # 121 frames -> 16 latent frames; 768x512 / 32 -> 24 x 16
        ("ltx-video-13b", "768x512", 121, (16, 16, 24)),
        ("ltx-video-13b", "1216x704", 257, (33, 22, 38)),
        ("ltx-video-13b", "768x512", 1, (1, 16, 24)),
        ("tiny-ltx-video", "64x64", 9, (2, 2, 2)),
    ],
)
def test_tokens_from_the_vae(model_id, size, frames, grid):
    from runtime.families.ltx_video import token_grid, video_tokens_of

    workload = get_model(model_id).workload(size, frames=frames)
    config = types.SimpleNamespace(**get_model(model_id).config)
    assert token_grid(config, workload) == grid
    assert video_tokens_of(config, workload) == grid[0] * grid[1] * grid[2]


def test_released_13b_blocks_and_total():
    inv = inventory("ltx-video-13b", DType.BF16)
    assert [b.name for b in inv.blocks] == [f"transformer_blocks.{i}" for i in range(48)]
    assert {b.params for b in inv.blocks} == {268_529_664}
    assert inv.total_params == 13_042_569_344
    assert 26.0e9 <= inv.total_bytes < 26.2e9  # bf16


def test_the_meta_trace_sees_every_token_of_both_cfg_halves():
    """Hidden states entering a block are (2 x tokens x width) in bf16 with batched CFG."""
    from profiler.flops import model_trace

    spec = get_model("ltx-video-13b")
    video = model_trace(spec.id, spec.workload("768x512", frames=121))
    image = model_trace(spec.id, spec.workload("768x512", frames=1))
    assert video.blocks[0].activation_bytes >= 2 * 6144 * 4096 * 2
    assert video.blocks[0].flops > 16 * image.blocks[0].flops


@pytest.mark.parametrize(
    "args, words",
    [
        (["--frames", "120"], ["frames 120", "8k+1", "give 113 or 121"]),
        (["--resolution", "784x512"], ["resolution 784x512", "multiples of 32"]),
    ],
    ids=["not-8k+1", "not-32"],
)
def test_unusable_clip_sizes_exit_2_with_one_line(args, words, tmp_path):
    out = tmp_path / "plan.json"
    db = f"sqlite:///{tmp_path / 'store.db'}"
    result = runner.invoke(app, ["tune", "--model", "ltx-video-13b", *args, "--vram", "12GB",
                                 "--gpu", "rtx-4070", "--db", db, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    for word in words:
        assert word in result.stderr
    assert not out.exists()


def test_the_pipeline_runs_one_batched_cfg_forward_per_step():
    """The catalog's CFG mode is the pipeline's: LTXPipeline concatenates the negative and the
    positive prompt, so each step is one transformer forward of batch 2."""
    from runtime.families import get_family
    from tests.family_support.ltx_video import build_tiny_pipeline

    spec = get_model("tiny-ltx-video")
    workload = spec.workload("64x64", frames=9)
    pipe = build_tiny_pipeline()
    batches = []
    pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append(kwargs["hidden_states"].shape), with_kwargs=True
    )
    kwargs = get_family("ltx-video").prompt_kwargs(pipe, "a cat", workload, spec.default_guidance, "cpu")
    pipe(**kwargs, num_inference_steps=2, height=64, width=64, output_type="latent")
    tokens = 2 * 2 * 2
    assert batches == [torch.Size([workload.forward_batch, tokens, 8])] * 2
    assert workload.forwards_per_step == 1


def test_ltx_13b_at_768x512_121_frames_fits_12gb_on_an_rtx_4070(tmp_path):
    """The issue's example (done-when): a plan within 12 GB that streams part of the 26 GB."""
    from planner.budget import parse_size
    from runtime.plan import load_plan

    out = tmp_path / "plan.json"
    result = runner.invoke(app, [
        "tune", "--model", "ltx-video-13b", "--resolution", "768x512", "--frames", "121",
        "--vram", "12GB", "--gpu", "rtx-4070", "--trials", "40",
        "--db", f"sqlite:///{tmp_path / 'store.db'}", "-o", str(out), "--json",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["peak_vram_bytes"] <= parse_size("12GB", "--vram")
    streamed = sum(c["streamed"] for c in data["placement"]["blocks"].values())
    assert 0 < streamed < 48
    assert load_plan(out).model.id == "ltx-video-13b"


def test_comfyui_checkpoint_with_its_vae_loads_the_transformer(tmp_path):
    """Released LTX single files (as ComfyUI loads them) hold the transformer under
    `model.diffusion_model.` in the original names and the VAE under `vae.`."""
    from safetensors.torch import save_file

    from runtime.checkpoint.inspect import Naming, inspect_checkpoint
    from runtime.checkpoint.load import load_transformer
    from tests.family_support.ltx_video import build_tiny_pipeline, to_original

    pipe = build_tiny_pipeline()
    state = {k: v.contiguous() for k, v in pipe.transformer.state_dict().items()}
    tensors = to_original(dict(state))
    assert "model.diffusion_model.patchify_proj.weight" in tensors
    assert "model.diffusion_model.transformer_blocks.0.attn1.q_norm.weight" in tensors
    tensors.update({f"vae.{k}": v.contiguous() for k, v in pipe.vae.state_dict().items()})
    path = tmp_path / "ltxv-tiny.safetensors"
    save_file(tensors, str(path))
    report = inspect_checkpoint(path)
    assert (report.family, report.naming) == ("ltx-video", Naming.ORIGINAL)
    assert [b.name for b in report.blocks] == [f"transformer_blocks.{i}" for i in range(4)]
    config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
    loaded = load_transformer(path, config, family="ltx-video").state_dict()
    assert sorted(loaded) == sorted(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_ltx_and_the_image_families_do_not_claim_each_others_files():
    from runtime.families import get_family

    ltx = get_family("ltx-video")
    flux_like = ["transformer_blocks.0.attn.to_q.weight", "transformer_blocks.0.attn.norm_q.weight",
                 "transformer_blocks.0.norm1.linear.weight", "single_transformer_blocks.0.proj_out.weight"]
    assert ltx.claims(flux_like) == 0
    assert ltx.block_of_tensor("transformer_blocks.0.attn.to_q.weight") is None
    assert ltx.block_of_tensor("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight") is None
    names = ["model.diffusion_model.transformer_blocks.0.attn1.q_norm.weight",
             "model.diffusion_model.transformer_blocks.0.ff.net.2.weight", "vae.encoder.conv_in.conv.weight"]
    assert ltx.claims(names) == 3
    assert [ltx.block_of_tensor(n) for n in names] == ["transformer_blocks.0"] * 2 + [None]


def test_planner_apply_in_bf16_writes_every_frame(tmp_path):
    from PIL import Image

    from runtime.plan import Target, build_plan, save_plan
    from tests.family_support.ltx_video import build_tiny_pipeline

    build_tiny_pipeline().save_pretrained(tmp_path / "pipe", safe_serialization=True)
    inv = inventory("tiny-ltx-video", DType.BF16)
    plan = build_plan(inv, {b.name for b in inv.blocks[1::2]},
                      workload=get_model("tiny-ltx-video").workload("64x64", frames=9),
                      target=Target("cpu", 1 << 30), prefetch_depth=2)
    save_plan(plan, tmp_path / "plan.json")
    out = tmp_path / "clip.webp"
    result = runner.invoke(app, [
        "apply", str(tmp_path / "plan.json"), "--weights", str(tmp_path / "pipe"),
        "--prompt", "a red cat", "--steps", "2", "--frames", "17", "-o", str(out),
        "--device", "cpu", "--db", f"sqlite:///{tmp_path / 'store.db'}",
    ])
    assert result.exit_code == 0, result.output
    with Image.open(out) as clip:
        assert (clip.size, clip.n_frames) == ((64, 64), 17)


def test_guidance_that_turns_cfg_on_is_refused_for_a_plan_without_cfg():
    import dataclasses

    from runtime.errors import UserError
    from runtime.families import get_family
    from runtime.workload import CfgMode
    from tests.family_support.ltx_video import build_tiny_pipeline

    pipe, adapter = build_tiny_pipeline(), get_family("ltx-video")
    workload = dataclasses.replace(get_model("tiny-ltx-video").workload("64x64"), cfg=CfgMode.NONE)
    with pytest.raises(UserError, match="not tuned for"):
        adapter.prompt_kwargs(pipe, "a cat", workload, 3.0, torch.device("cpu"))
    kwargs = adapter.prompt_kwargs(pipe, "a cat", workload, 1.0, torch.device("cpu"))
    assert "negative_prompt_embeds" not in kwargs


@pytest.mark.parametrize("timestep_conditioning", [False, True], ids=["0.9.0-vae", "0.9.1-vae"])
def test_decode_is_the_pipelines_own(timestep_conditioning):
    """`decode` of the pipeline's latents gives the frames LTXPipeline itself returns, for the
    VAEs with and without timestep conditioning."""
    import numpy as np
    from diffusers import AutoencoderKLLTXVideo

    from runtime.families import get_family
    from tests.family_support.ltx_video import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    if timestep_conditioning:
        config = {k: v for k, v in pipe.vae.config.items() if not k.startswith("_")}
        torch.manual_seed(1)
        pipe.vae = AutoencoderKLLTXVideo(**{**config, "timestep_conditioning": True}).eval()
    generator = torch.Generator().manual_seed(2)  # released VAEs carry per-channel statistics
    pipe.vae.latents_mean.copy_(0.1 * torch.randn(8, generator=generator))
    pipe.vae.latents_std.copy_(0.5 + torch.rand(8, generator=generator))
    adapter, workload = get_family("ltx-video"), get_model("tiny-ltx-video").workload("64x64")
    kwargs = adapter.prompt_kwargs(pipe, "a cat", workload, 3.0, "cpu")
    run = dict(kwargs, num_inference_steps=2, height=64, width=64, return_dict=False)
    frames = pipe(**run, output_type="pil", generator=torch.Generator().manual_seed(0))[0][0]
    latents = pipe(**run, output_type="latent", generator=torch.Generator().manual_seed(0))[0]
    decoded = adapter.decode(pipe, latents, workload)
    assert len(decoded) == len(frames) == 9
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(decoded, frames))
