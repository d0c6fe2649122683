"""Issue 25 (Trust II), `planner apply`: everything it can check from the plan, the catalog, the
folder's model_index.json and configs, a single file's and a LoRA's header is refused before any
weight is read, in one sentence. A tiny FluxPipeline saved to disk (CPU, nothing downloaded);
"before any weight is read" is shown by a transformer file of garbage that is never opened."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_checks import refused
from runtime.inventory import inventory
from runtime.plan import Predictions, Target, build_plan, plan_to_dict, save_plan
from runtime.workload import Workload
from tests.pipeline_fixtures import save_tiny_pipeline

@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "tiny-flux")


@pytest.fixture
def folder(pipeline, tmp_path) -> Path:
    """A copy whose transformer weights are garbage: reading them would fail differently."""
    copy = tmp_path / "tiny-flux"
    shutil.copytree(pipeline, copy)
    (copy / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    return copy


def _plan(tmp_path, model_id="tiny-flux", edit=None) -> Path:
    from runtime.catalog import get_model

    inv = inventory(model_id)
    spec = get_model(model_id)
    plan = build_plan(inv, {b.name for b in inv.blocks[::2]},
                      workload=spec.workload(), target=Target("rtx-4060", 1 << 30),
                      predictions=Predictions(step_ms=5.0, peak_vram_bytes=2 << 20, lower_bound_ms=4.0))
    path = tmp_path / f"{model_id}.json"
    if edit is None:
        save_plan(plan, path)
    else:
        data = plan_to_dict(plan)
        edit(data)
        path.write_text(json.dumps(data))
    return path


def _refused(plan: Path, weights: Path, *extra: str) -> str:
    out = plan.parent / "never.png"
    line = refused("apply", plan, "--weights", weights, "--prompt", "a cat", "--steps", "1",
                   "-o", out, "--device", "cpu", *extra)
    assert not out.exists()
    return line


def test_a_plan_of_another_family_than_the_folder(folder, tmp_path):
    line = _refused(_plan(tmp_path, "tiny-wan"), folder)
    assert "FluxTransformer2DModel" in line and "WanTransformer3DModel" in line


def test_a_folder_whose_blocks_differ_from_the_plan(folder, tmp_path):
    config = folder / "transformer" / "config.json"
    data = json.loads(config.read_text())
    data["num_single_layers"] += 1
    config.write_text(json.dumps(data))
    line = _refused(_plan(tmp_path), folder)
    assert "has 8 blocks but the transformer of" in line


def test_a_bad_experts_section_is_refused_before_the_first_phase(folder, tmp_path):
    def edit(data):
        second = json.loads(json.dumps(data["blocks"]))
        second[0]["bytes"] += 4
        data["experts"] = [{"attr": "transformer_2", "blocks": second, "prefetch_depth": 1,
                            "host_memory": "pageable", "predictions": data["predictions"]}]

    line = _refused(_plan(tmp_path, "tiny-wan-a14b", edit), folder)
    assert "expert transformer_2" in line and "bytes" in line


@pytest.mark.parametrize("index, words", [
    ("{not json", "JSON"),
    ('{"_class_name": "FluxPipeline", "transformer": ["my_code", "MyTransformer"]}', "code outside"),
    ('{"_class_name": "FluxPipeline", "scale": NaN}', "NaN"),
    ("[]", "model_index.json"),
])
def test_a_model_index_that_is_not_a_diffusers_one(folder, tmp_path, index, words):
    (folder / "model_index.json").write_text(index)
    assert words in _refused(_plan(tmp_path), folder)


def test_a_component_held_only_as_a_pickle_is_never_loaded(pipeline, tmp_path):
    copy = tmp_path / "pickled"
    shutil.copytree(pipeline, copy)
    vae = copy / "vae"
    for f in vae.glob("*.safetensors"):
        f.rename(f.with_name("diffusion_pytorch_model.bin"))
    line = _refused(_plan(tmp_path), copy)
    assert "pickle" in line and "safe_serialization" in line


def test_a_safetensors_that_is_not_a_lora(pipeline, folder, tmp_path):
    not_lora = pipeline / "vae" / "diffusion_pytorch_model.safetensors"
    line = _refused(_plan(tmp_path), folder, "--lora", str(not_lora))
    assert "not a LoRA" in line


def test_a_lora_for_another_architecture(folder, tmp_path):
    import torch
    from safetensors.torch import save_file

    lora = tmp_path / "wan-lora.safetensors"
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 32),
               "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(32, 4)}, str(lora))
    line = _refused(_plan(tmp_path), folder, "--lora", str(lora))
    assert "made for another model" in line


def test_a_gguf_transformer_with_a_plain_plan(pipeline, folder, tmp_path):
    from conftest import build_tiny_flux
    from tests.quant_files import save_gguf

    gguf = save_gguf(build_tiny_flux().state_dict(), tmp_path / "flux-Q8_0.gguf", "Q8_0")
    line = _refused(_plan(tmp_path), folder, "--transformer", str(gguf))
    assert "gguf" in line and "planner tune --model tiny-flux --weights" in line


def test_frames_on_an_image_model(folder, tmp_path):
    line = _refused(_plan(tmp_path), folder, "--frames", "5")
    assert "makes images" in line
