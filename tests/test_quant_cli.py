"""The CLI with quantized checkpoints: `tune --quant` and `--weights`, `apply --transformer` with
a tiny GGUF and a tiny NF4 FLUX on CPU, the image checked against the plain model's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from planner.cli import app
from runtime.dtypes import DType
from runtime.plan import load_plan
from tests.family_support import support
from tests.quant_files import save_gguf, save_nf4

pytest.importorskip("bitsandbytes")
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.parametrize("quant", ["q4_k", "nf4"])
def test_tune_quant_compares_formats(quant, tmp_path):
    out = tmp_path / "plan.json"
    result = invoke("tune", "--model", "flux-dev", "--quant", quant, "--vram", "6GB",
                    "--gpu", "rtx-4060", "--trials", "30", "-o", out, "--json")
    data = json.loads(result.stdout)
    plan = load_plan(out)
    assert plan.model.storage_dtype is DType(quant)
    assert all(b.quant == (quant,) for b in plan.blocks)
    formats = {row["storage"]: row for row in data["formats"]}
    assert set(formats) == {"bf16", "fp8"} and all(r["fits"] for r in formats.values())
    # the quantized transformer is the smallest download; bf16 is the largest
    assert data["weight_bytes"] < formats["fp8"]["weight_bytes"] < formats["bf16"]["weight_bytes"]
    text = invoke("tune", "--model", "flux-dev", "--quant", quant, "--vram", "6GB",
                  "--gpu", "rtx-4060", "--trials", "30").stdout
    assert "storage formats within both budgets" in text and f"{quant} (this plan)" in text


def test_quant_is_faster_where_the_bus_binds(tmp_path):
    """At 8 GB on an H100 bf16 flux-dev is transfer-bound: Q4_K packs ~3.5x fewer bytes, kept
    packed on the device or on the bus, and dequantized there."""
    data = json.loads(invoke("tune", "--model", "flux-dev", "--quant", "q4_k", "--vram", "8GB",
                             "--gpu", "h100", "--trials", "30", "--json").stdout)
    bf16 = next(r for r in data["formats"] if r["storage"] == "bf16")
    assert data["step_ms"] < bf16["step_ms"] * 0.8
    placement = data["placement"]
    assert "auto" in (placement["cast"], placement.get("resident_cast"))


def test_tune_refuses_two_storages_and_unknown_quant(tmp_path):
    result = runner.invoke(app, ["tune", "--model", "flux-dev", "--quant", "q4_k", "--dtype",
                                 "fp8", "--vram", "6GB", "--gpu", "rtx-4060"])
    assert result.exit_code != 0 and "give one of them" in result.output
    result = runner.invoke(app, ["tune", "--model", "flux-dev", "--quant", "q9", "--vram", "6GB",
                                 "--gpu", "rtx-4060"])
    assert result.exit_code != 0 and "unknown --quant 'q9'" in result.output


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    pipe = support("flux").build_tiny_pipeline("tiny-flux")
    pipe.save_pretrained(folder / "pipe", safe_serialization=True)
    files = {
        "gguf": save_gguf(pipe.transformer.state_dict(), folder / "tiny-Q8_0.gguf", "Q8_0"),
        "nf4": save_nf4(pipe.transformer, folder / "tiny-nf4.safetensors"),
    }
    return folder / "pipe", files


def plain_image(weights, transformer_file, prompt, steps, seed):
    """The pipeline run directly, its transformer dequantized ahead of time (no plan)."""
    from runtime.catalog import get_model
    from runtime.checkpoint.load_quantized import dequantize_model
    from runtime.families import get_family
    from runtime.generate import _transformer_from_file, load_pipeline

    adapter = get_family("flux")
    transformer = _transformer_from_file(adapter, weights, transformer_file)
    dequantize_model(transformer, torch.bfloat16)
    transformer.to(torch.bfloat16)
    pipe = load_pipeline(adapter, weights, None, torch.bfloat16)
    pipe.transformer = transformer
    spec = get_model("tiny-flux")
    workload = spec.workload("64x64", 1)
    with torch.no_grad():
        kwargs = adapter.prompt_kwargs(pipe, prompt, workload, spec.default_guidance, torch.device("cpu"))
        latents = pipe(**kwargs, num_inference_steps=steps, height=64, width=64,
                       generator=torch.Generator("cpu").manual_seed(seed), output_type="latent").images
    return adapter.decode(pipe, latents, workload)[0]


@pytest.mark.parametrize("kind", ["gguf", "nf4"])
def test_apply_tiny_quantized_flux(kind, tiny, tmp_path):
    from PIL import Image

    weights, files = tiny
    path = files[kind]
    plan_file = tmp_path / "plan.json"
    db = f"sqlite:///{tmp_path / 'store.db'}"
    invoke("tune", "--model", "tiny-flux", "--weights", path, "--vram", "1GB", "--gpu",
           "rtx-4060", "--resolution", "64x64", "--trials", "20", "-o", plan_file, "--db", db)
    plan = load_plan(plan_file)
    assert plan.model.storage_dtype is (DType.Q8_0 if kind == "gguf" else DType.NF4)
    # stream half the blocks, packed and dequantized on use, to exercise the ring
    import dataclasses

    from runtime.plan import CastMode, Placement, save_plan

    blocks = tuple(
        dataclasses.replace(b, placement=Placement.STREAMED if i % 2 else Placement.RESIDENT,
                            cast=CastMode.AUTO)
        for i, b in enumerate(plan.blocks)
    )
    save_plan(dataclasses.replace(plan, blocks=blocks), plan_file)
    out = tmp_path / "out.png"
    invoke("apply", plan_file, "--weights", weights, "--transformer", path, "--prompt",
           "a cat on the mat", "--steps", "2", "--seed", "3", "-o", out, "--device", "cpu",
           "--db", db)
    expected = plain_image(weights, path, "a cat on the mat", 2, 3)
    with Image.open(out) as image:
        assert np.array_equal(np.asarray(image), np.asarray(expected))
