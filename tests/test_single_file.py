"""Single-file transformer checkpoints in original (BFL/ComfyUI) naming, real files, CPU.

Files are written from the tiny pipeline's transformer by `tests.bfl_format` (the inverse of
diffusers' converter); loading them back must give the same tensors, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from planner.cli import app
from runtime.checkpoint import Naming, inspect_checkpoint
from runtime.checkpoint.load import load_transformer
from runtime.checkpoint.names import COMFYUI_PREFIX
from runtime.families import get_family
from runtime.dtypes import DType, storage_dtype
from runtime.errors import CheckpointError
from runtime.families import get_family
from runtime.inventory import inventory
from runtime.plan import Predictions, Target, build_plan, save_plan
from runtime.workload import Workload
from tests.bfl_format import save_bfl, to_bfl
from tests.conftest import build_tiny_flux
from tests.pipeline_fixtures import save_tiny_pipeline

WORKLOAD = Workload(64, 64, text_tokens=16)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "tiny-flux")


@pytest.fixture(scope="module")
def config(pipe) -> dict:
    from diffusers import FluxTransformer2DModel

    return dict(FluxTransformer2DModel.load_config(pipe, subfolder="transformer"))


@pytest.fixture(scope="module")
def state(pipe) -> dict:
    """The pipeline's transformer tensors, diffusers names, as saved."""
    return load_file(str(pipe / "transformer" / "diffusion_pytorch_model.safetensors"))


def _bits(tensor):
    return tensor.contiguous().view(torch.uint8)  # torch.equal has no fp8 kernel on CPU


def _assert_same_tensors(model, expected: dict) -> None:
    got = model.state_dict()
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert torch.equal(_bits(got[name]), _bits(tensor)), name


def _forward(model):
    # CPU matrix-vector kernels sum in an order that depends on the weights' address mod 16
    # (the same values 4 bytes apart give different last bits), and a file's layout sets
    # those addresses: so every tensor gets fresh, equally aligned storage before comparing.
    for param in model.parameters():
        param.data = param.data.clone()
    inputs = get_family("flux").model_inputs(model, WORKLOAD, "cpu", torch.float32)
    with torch.no_grad():
        return model(**inputs)[0]


@pytest.mark.parametrize("prefix", ["", COMFYUI_PREFIX], ids=["bfl", "comfyui"])
def test_bfl_file_loads_bit_identical(pipe, config, state, tmp_path, prefix):
    from diffusers import FluxTransformer2DModel

    path = save_bfl(state, tmp_path / "bfl.safetensors", prefix)
    names = list(load_file(str(path)))
    assert f"{prefix}double_blocks.0.img_attn.qkv.weight" in names
    assert inspect_checkpoint(path).naming is Naming.ORIGINAL
    model = load_transformer(path, config)
    _assert_same_tensors(model, state)
    reference = FluxTransformer2DModel.from_pretrained(pipe, subfolder="transformer").eval()
    assert torch.equal(_forward(model), _forward(reference))


def test_diffusers_file_still_loads(pipe, config, state):
    model = load_transformer(pipe / "transformer" / "diffusion_pytorch_model.safetensors", config)
    _assert_same_tensors(model, state)


def test_linear1_split_matches_diffusers_at_flux1_width(state):
    """The one split done here instead of by diffusers' converter (it hard-codes FLUX.1's
    width 3072) gives what the converter gives at that width."""
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers as convert,
    )

    bfl = to_bfl(state)
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    generator = torch.Generator().manual_seed(0)
    for name in [n for n in bfl if ".linear1." in n]:
        bfl[name] = torch.randn(7 * 3072, *bfl[name].shape[1:], generator=generator)
        index, kind = name.split(".")[1], name.rsplit(".", 1)[1]
        for part, rows in [("attn.to_q", 3072), ("attn.to_k", 3072), ("attn.to_v", 3072),
                           ("proj_mlp", 4 * 3072)]:
            target = f"single_transformer_blocks.{index}.{part}.{kind}"
            shapes[target] = (rows, *shapes[target][1:])
    expected = convert(dict(bfl))
    got = get_family("flux").convert_original(dict(bfl), shapes)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def _dtype_inventory(model) -> tuple[list, dict]:
    """Bytes by dtype per block and for the rest, from the tensors' actual dtypes."""
    def by_dtype(tensors):
        out: dict[str, int] = {}
        for t in tensors:
            key = DType.from_torch(t.dtype).value
            out[key] = out.get(key, 0) + t.numel() * t.element_size()
        return out

    blocks, seen = [], set()
    for name, kind, block in get_family("flux").blocks(model):
        params = list(block.parameters())
        seen.update(id(p) for p in params)
        blocks.append((name, kind, by_dtype(params)))
    return blocks, by_dtype(p for p in model.parameters() if id(p) not in seen)


def test_fp8_bfl_file_keeps_its_dtypes(config, state, tmp_path):
    from runtime.engine.checks import check_plan

    fp8 = {k: v.to(storage_dtype(DType.FP8, tuple(v.shape)).torch()) for k, v in state.items()}
    path = save_bfl(fp8, tmp_path / "fp8.safetensors", COMFYUI_PREFIX)
    stored = {t.dtype for t in load_file(str(path)).values()}
    assert stored == {torch.float8_e4m3fn, torch.bfloat16}
    model = load_transformer(path, config)
    _assert_same_tensors(model, fp8)  # dtypes kept, bits unchanged

    want = inventory("tiny-flux", DType.FP8)
    blocks, rest = _dtype_inventory(model)
    assert blocks == [(b.name, b.kind, dict(b.bytes_by_dtype)) for b in want.blocks]
    assert rest == dict(want.non_block_bytes_by_dtype)
    plan = build_plan(want, set(), workload=WORKLOAD, target=Target("cpu", 1 << 30),
                      predictions=Predictions(step_ms=1.0, peak_vram_bytes=1, lower_bound_ms=1.0))
    check_plan(model, get_family("flux"), plan)  # the plan's fp8 storage check


def _drop(name):
    return lambda bfl: bfl.pop(name)


def _add(name):
    return lambda bfl: bfl.__setitem__(name, torch.zeros(4))


def _widen(name):
    return lambda bfl: bfl.__setitem__(name, torch.cat([bfl[name], bfl[name][:1]]))


def _drop_guidance(bfl):
    for name in [n for n in bfl if "guidance_in." in n]:
        del bfl[name]


BAD_FILES = {
    "missing qkv": ("", _drop("double_blocks.1.img_attn.qkv.weight"),
                    "lacks the tensor 'double_blocks.1.img_attn.qkv.weight'"),
    "missing, prefixed": (COMFYUI_PREFIX, _drop(COMFYUI_PREFIX + "single_blocks.2.linear2.bias"),
                          f"lacks the tensor '{COMFYUI_PREFIX}single_blocks.2.linear2.bias'"),
    "missing guidance": ("", _drop_guidance,
                         "lacks the tensor 'time_text_embed.guidance_embedder.linear_1.bias'"),
    "unexpected": ("", _add("double_blocks.0.img_attn.extra.weight"),
                   "unknown tensor 'double_blocks.0.img_attn.extra.weight'"),
    "unexpected, prefixed": (COMFYUI_PREFIX, _add(COMFYUI_PREFIX + "lora_scale"),
                             f"unknown tensor '{COMFYUI_PREFIX}lora_scale'"),
    "wrong shape": ("", _widen("img_in.weight"), "stores 'x_embedder.weight' (diffusers name)"),
    "linear1 rows": ("", _widen("single_blocks.0.linear1.weight"),
                     "single_blocks.0.linear1.weight has 225 rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_bfl_file_names_the_tensor(config, state, tmp_path, case):
    prefix, damage, message = BAD_FILES[case]
    bfl = to_bfl(state, prefix)
    damage(bfl)
    path = tmp_path / "bad.safetensors"
    save_file(bfl, str(path))
    with pytest.raises(CheckpointError) as info:
        load_transformer(path, config)
    assert message in str(info.value)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- through the CLI


def _plan(tmp_path) -> Path:
    inv = inventory("tiny-flux")  # every other block streamed, split views of linear1 too
    plan = build_plan(inv, {b.name for b in inv.blocks[::2]}, workload=WORKLOAD,
                      target=Target("cpu", 1 << 30), prefetch_depth=2,
                      predictions=Predictions(step_ms=5.0, peak_vram_bytes=2 << 20,
                                              lower_bound_ms=4.0))
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    return path


def _apply(plan: Path, pipe: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, [
        "apply", str(plan), "--weights", str(pipe), "--prompt", "a cat", "--steps", "1",
        "--seed", "7", "-o", str(out), "--device", "cpu", *extra,
    ])


def test_apply_with_a_bfl_transformer_gives_the_same_image(pipe, state, tmp_path):
    import numpy as np
    from PIL import Image

    plan = _plan(tmp_path)
    diffusers_file = pipe / "transformer" / "diffusion_pytorch_model.safetensors"
    bfl = save_bfl(state, tmp_path / "bfl.safetensors", COMFYUI_PREFIX)
    other = save_bfl(build_tiny_flux(seed=1).state_dict(), tmp_path / "other.safetensors")
    images = {}
    for label, file in [("diffusers", diffusers_file), ("bfl", bfl), ("other", other)]:
        out = tmp_path / f"{label}.png"
        result = _apply(plan, pipe, out, "--transformer", str(file))
        assert result.exit_code == 0, result.output
        with Image.open(out) as image:
            images[label] = (out.read_bytes(), np.asarray(image).copy())
    assert images["bfl"][0] == images["diffusers"][0]
    assert np.array_equal(images["bfl"][1], images["diffusers"][1])
    assert not np.array_equal(images["other"][1], images["diffusers"][1])  # the file is used


def test_apply_with_a_bad_bfl_transformer_is_one_line_exit_2(pipe, state, tmp_path):
    bfl = to_bfl(state)
    del bfl["final_layer.adaLN_modulation.1.weight"]
    path = tmp_path / "bad.safetensors"
    save_file(bfl, str(path))
    out = tmp_path / "never.png"
    result = _apply(_plan(tmp_path), pipe, out, "--transformer", str(path))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "final_layer.adaLN_modulation.1.weight" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("model_id", ["tiny-chroma", "tiny-wan", "tiny-flux"])
def test_a_model_built_for_loading_has_its_buffers_as_the_constructor_makes_them(model_id):
    """No checkpoint holds a non-persistent buffer (Chroma's mod_proj, Wan's rotary tables), so
    the model a file is loaded into computes them for real while its parameters stay on meta."""
    from runtime.catalog import get_model
    from runtime.checkpoint.load import _build_for_loading
    from runtime.families import get_family

    spec = get_model(model_id)
    register = torch.nn.Module.register_parameter
    model = _build_for_loading(spec.family, spec.config)
    assert torch.nn.Module.register_parameter is register  # the patch is undone
    plain = get_family(spec.family).build(spec.config, device="cpu")
    assert all(p.is_meta for p in model.parameters())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]
    persistent = set(model.state_dict())
    for (name, buffer), (_, want) in zip(model.named_buffers(), plain.named_buffers()):
        if name not in persistent:
            assert not buffer.is_meta and torch.equal(buffer, want), name
    assert all(p.device.type == "cpu" for p in plain.parameters())
