"""Wan specifics the family contract suite does not cover: token counts from the VAE and the
patching, sizes the pipeline would round, frames through profile and tune, the released
sizes, and original single files under ComfyUI's prefix.

The shared tests (tests/test_family_contract.py) run tiny-wan through everything downstream.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from planner.cli import app
from runtime.catalog import get_model
from runtime.dtypes import DType
from runtime.inventory import inventory

runner = CliRunner()


def _config(model_id):
    """The catalog config as the adapter reads it from a built model's `config`."""
    import types

    return types.SimpleNamespace(**get_model(model_id).config)


@pytest.mark.parametrize(
    "model_id, size, frames, grid",
    [
        # 81 frames -> 21 latent frames; 832x480 / 8 / 2 -> 52 x 30
        ("wan2.2-t2v-a14b", "832x480", 81, (21, 30, 52)),
        ("wan2.1-t2v-1.3b", "832x480", 81, (21, 30, 52)),
        ("wan2.1-t2v-14b", "1280x720", 81, (21, 45, 80)),
        # the 5B's VAE compresses 16x: 1280x704 / 16 / 2 -> 40 x 22; 121 frames -> 31
        ("wan2.2-ti2v-5b", "1280x704", 121, (31, 22, 40)),
        ("tiny-wan", "64x64", 5, (2, 4, 4)),
        ("tiny-wan", "64x64", 1, (1, 4, 4)),
    ],
)
def test_tokens_from_the_vae_and_the_patching(model_id, size, frames, grid):
    from runtime.families.wan import token_grid, video_tokens_of

    workload = get_model(model_id).workload(size, frames=frames)
    config = _config(model_id)
    assert token_grid(config, workload) == grid
    assert video_tokens_of(config, workload) == grid[0] * grid[1] * grid[2]


def test_the_meta_trace_sees_every_token():
    """Hidden states entering a block are (tokens x width) in bf16: the first block's
    activation peak is at least that, and above the block's own weights at 81 frames."""
    from profiler.flops import model_trace

    spec = get_model("wan2.2-t2v-a14b")
    video = model_trace(spec.id, spec.workload("832x480", frames=81))
    image = model_trace(spec.id, spec.workload("832x480", frames=1))
    block_bytes = inventory(spec.id).blocks[0].bytes
    assert video.blocks[0].activation_bytes > block_bytes > image.blocks[0].activation_bytes
    assert video.blocks[0].activation_bytes >= 32760 * 5120 * 2
    assert video.blocks[0].flops > 21 * image.blocks[0].flops  # attention grows as tokens^2


def test_per_token_timesteps_of_the_ti2v_model_trace_on_meta():
    from profiler.flops import model_trace

    spec = get_model("wan2.2-ti2v-5b")
    trace = model_trace(spec.id, spec.workload("832x480", frames=17))
    assert len(trace.blocks) == 30 and all(b.flops > 0 for b in trace.blocks)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model", "tiny-wan", "--frames", "6"], ["frames 6", "4k+1", "give 5 or 9"]),
        (["--model", "tiny-wan", "--frames", "0"], ["frames 0", "out of range"]),
        (["--model", "wan2.2-ti2v-5b", "--resolution", "1280x720"],
         ["resolution 1280x720", "multiple of 32"]),
    ],
    ids=["not-4k+1", "zero", "ti2v-720"],
)
def test_unusable_clip_sizes_exit_2_with_one_line(args, words, tmp_path):
    db = f"sqlite:///{tmp_path / 'store.db'}"
    out = tmp_path / "plan.json"
    result = runner.invoke(app, ["tune", *args, "--vram", "8GB", "--gpu", "rtx-4060",
                                 "--db", db, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    for word in words:
        assert word in result.stderr
    assert not out.exists()


def test_frames_reach_the_profile_and_the_plan(tmp_path):
    peaks, steps = {}, {}
    for frames in (5, 13):
        db = f"sqlite:///{tmp_path / f'store{frames}.db'}"  # (a store matching on frames: db/)
        size = ["--model", "tiny-wan", "--resolution", "64x64", "--frames", str(frames)]
        profiled = runner.invoke(app, ["profile", *size, "--device", "cpu", "--db", db, "--json"])
        assert profiled.exit_code == 0, profiled.output
        data = json.loads(profiled.output)
        assert data["workload"]["frames"] == frames
        peaks[frames] = data["summary"]["activation_peak_bytes"]
        tuned = runner.invoke(app, ["tune", *size, "--vram", "1GB", "--gpu", "rtx-4060",
                                    "--db", db, "--json", "--trials", "20"])
        assert tuned.exit_code == 0, tuned.output
        steps[frames] = json.loads(tuned.output)["lower_bound_ms"]
    assert peaks[13] > peaks[5]
    assert steps[13] > steps[5]


def test_wan22_a14b_at_480p_81_frames_fits_12gb_on_an_rtx_4070(tmp_path):
    """The issue's example: one expert's plan within 12 GB (the second expert: issue 10 item 3)."""
    from planner.budget import parse_size
    from runtime.plan import load_plan

    db = f"sqlite:///{tmp_path / 'store.db'}"
    out = tmp_path / "plan.json"
    result = runner.invoke(app, [
        "tune", "--model", "wan2.2-t2v-a14b", "--resolution", "832x480", "--frames", "81",
        "--vram", "12GB", "--gpu", "rtx-4070", "--trials", "40", "--db", db, "-o", str(out),
        "--json",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["peak_vram_bytes"] <= parse_size("12GB", "--vram")
    assert load_plan(out).model.id == "wan2.2-t2v-a14b"
    streamed = sum(c["streamed"] for c in data["placement"]["blocks"].values())
    assert 0 < streamed < 40  # 28.6 GB of blocks cannot all stay, some can
    experts = data["experts"]
    assert [p["expert"] for p in experts["phases"]] == ["transformer", "transformer_2"]
    assert sum(p["steps"] for p in experts["phases"]) == 40
    assert experts["peak_vram_bytes"] <= parse_size("12GB", "--vram")
    assert experts["switch"]["in_bytes"] > 0 and experts["switch"]["ms"] > 0
    explained = runner.invoke(app, ["explain", str(out)])
    assert explained.exit_code == 0, explained.output
    assert "expert switch:" in explained.output and "transformer_2" in explained.output
    one = runner.invoke(app, ["explain", str(out), "--json"])
    assert json.loads(one.output)["experts"]["switch"] == experts["switch"]


@pytest.mark.parametrize(
    "model_id, gigabytes",
    # bf16 transformer sizes as published (the 2.2 5B's file is fp16, the same bytes)
    [("wan2.1-t2v-1.3b", "2.84"), ("wan2.1-t2v-14b", "28.6"), ("wan2.2-t2v-a14b", "28.6"),
     ("wan2.2-ti2v-5b", "10.0")],
)
def test_bf16_totals_match_the_published_files(model_id, gigabytes):
    import decimal

    value = decimal.Decimal(gigabytes)
    half = decimal.Decimal(1).scaleb(value.as_tuple().exponent) / 2
    total = inventory(model_id, DType.BF16).total_bytes
    assert (value - half) * 10**9 <= total < (value + half) * 10**9


def test_original_wan_file_under_the_comfyui_prefix_loads(tmp_path):
    import torch
    from safetensors.torch import save_file

    from runtime.checkpoint.inspect import Naming, inspect_checkpoint
    from runtime.checkpoint.load import load_transformer
    from tests.family_support.wan import build_tiny_pipeline, to_original

    transformer = build_tiny_pipeline().transformer
    state = {k: v.contiguous() for k, v in transformer.state_dict().items()}
    path = tmp_path / "wan_original.safetensors"
    save_file(to_original(dict(state), prefix="model.diffusion_model."), str(path))
    report = inspect_checkpoint(path)
    assert (report.family, report.naming) == ("wan", Naming.ORIGINAL)
    assert len(report.blocks) == 4
    config = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    loaded = load_transformer(path, config, family="wan").state_dict()
    assert sorted(loaded) == sorted(state)
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_wan_and_flux_names_are_not_claimed_by_the_other():
    from runtime.families import get_family

    wan, flux = get_family("wan"), get_family("flux")
    for name in ("transformer_blocks.0.attn.to_q.weight", "double_blocks.3.img_attn.qkv.weight",
                 "single_blocks.2.linear1.weight", "model.diffusion_model.double_blocks.0.img_mod.lin.bias"):
        assert wan.block_of_tensor(name) is None, name
    for name in ("blocks.3.attn1.to_q.weight", "blocks.3.self_attn.q.weight",
                 "model.diffusion_model.blocks.0.modulation", "blocks.1.ffn.0.weight"):
        assert flux.block_of_tensor(name) is None, name
        assert wan.block_of_tensor(name) is not None, name
    assert wan.block_of_tensor("vace_blocks.0.after_proj.bias") is None


def test_planner_apply_in_bf16_where_diffusers_keeps_wan_modules_in_fp32(tmp_path):
    """WanPipeline.from_pretrained(torch_dtype=bf16) keeps norms, modulation tables and the
    time embedder in fp32; a bf16 plan runs on it (they are brought to bf16 as loaded)."""
    from PIL import Image

    from runtime.plan import Target, build_plan, save_plan
    from tests.family_support.wan import build_tiny_pipeline

    build_tiny_pipeline().save_pretrained(tmp_path / "pipe", safe_serialization=True)
    inv = inventory("tiny-wan", DType.BF16)
    plan = build_plan(inv, {b.name for b in inv.blocks[1::2]},
                      workload=get_model("tiny-wan").workload("64x64", frames=5),
                      target=Target("cpu", 1 << 30), prefetch_depth=2)
    assert plan.model.compute_dtype is DType.BF16
    save_plan(plan, tmp_path / "plan.json")
    out = tmp_path / "clip.gif"
    result = runner.invoke(app, [
        "apply", str(tmp_path / "plan.json"), "--weights", str(tmp_path / "pipe"),
        "--prompt", "a red cat", "--steps", "2", "--frames", "5", "-o", str(out),
        "--device", "cpu", "--db", f"sqlite:///{tmp_path / 'store.db'}",
    ])
    assert result.exit_code == 0, result.output
    with Image.open(out) as clip:
        assert clip.n_frames == 5


def test_models_of_one_architecture_keep_their_own_ids(tmp_path):
    """Wan 2.1 14B and an expert of Wan 2.2 A14B share a config, so the model cache holds one
    inventory for both; each model still gets its own id (and so tunes)."""
    a, b = inventory("wan2.1-t2v-14b"), inventory("wan2.2-t2v-a14b")
    assert (a.model_id, b.model_id) == ("wan2.1-t2v-14b", "wan2.2-t2v-a14b")
    assert a.blocks == b.blocks
    for model_id in ("wan2.1-t2v-14b", "wan2.2-t2v-a14b"):
        result = runner.invoke(app, ["tune", "--model", model_id, "--resolution", "832x480",
                                     "--vram", "12GB", "--gpu", "rtx-4070", "--trials", "10",
                                     "--db", f"sqlite:///{tmp_path / 'store.db'}", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["plan"]["model"]["id"] == model_id


def test_ti2v_blocks_take_a_timestep_per_token():
    """The 48-channel (Wan 2.2 VAE) layout: block inputs carry (batch, tokens, 6, width)
    modulation, as the forward makes it from per-token timesteps, and the model runs."""
    import torch

    from runtime.families import get_family

    adapter = get_family("wan")
    config = {**get_model("tiny-wan").config, "in_channels": 48, "out_channels": 48}
    model = adapter.build(config, device="cpu")
    workload = get_model("tiny-wan").workload("64x64", frames=5)  # 16x VAE: 2 x 2 x 2 tokens
    name, kind, block = adapter.blocks(model)[0]
    inputs = adapter.block_inputs(model, kind, workload, "cpu", torch.float32)
    assert tuple(inputs.kwargs["temb"].shape) == (1, 8, 6, 32)
    with torch.no_grad():
        out = block(*inputs.args, **inputs.kwargs)
        whole = model(**adapter.model_inputs(model, workload, "cpu", torch.float32))[0]
    assert out.shape == (1, 8, 32) and torch.isfinite(out).all()
    assert tuple(whole.shape) == (1, 48, 2, 4, 4)
