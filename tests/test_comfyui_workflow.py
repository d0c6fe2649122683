"""ComfyUI's own nodes around ours: FLUX loaded by UNETLoader with an fp8 `weight_dtype` under
a plan and under the auto node; ComfyUI's server driven over its HTTP API (POST /prompt,
/history, /interrupt) with the auto node in the workflow, writing a PNG through SaveImage whose
metadata holds no store URL.

ComfyUI comes from the pinned sdist (tests/comfy_fixtures.py); without it these tests skip.
"""

from __future__ import annotations

import pytest
import torch

from comfy_fixtures import TINY_UNET_CONFIG, comfy_nodes, comfyui, sample, tiny_flux_patcher
from runtime.dtypes import DType
from runtime.plan import Target, build_plan
from runtime.workload import Workload


@pytest.fixture(scope="module")
def comfy():
    return comfyui()


@pytest.fixture(autouse=True)
def _nothing_loaded(comfy, tmp_path, monkeypatch):
    monkeypatch.setenv("PLANNER_DB_URL", f"sqlite:///{tmp_path / 'planner.db'}")
    comfy.model_management.unload_all_models()
    yield
    comfy.model_management.unload_all_models()


@pytest.fixture
def unet_file(comfy, tmp_path, monkeypatch):
    """The tiny FLUX as a diffusion model file in ComfyUI's diffusion_models folder. ComfyUI's
    model detection sizes FLUX by 128-wide heads, which a 32-wide model does not have: the
    detection (a seam) returns the tiny FLUX's own config; everything else is UNETLoader's."""
    import folder_paths
    import safetensors.torch

    import comfy.model_detection

    from comfyui_nodes.patcher import diffusion_model

    state = diffusion_model(tiny_flux_patcher()).state_dict()
    safetensors.torch.save_file(state, tmp_path / "tiny-flux.safetensors")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusion_models",
                        ([str(tmp_path)], {".safetensors"}))
    monkeypatch.setattr(comfy.model_detection, "model_config_from_unet",
                        lambda sd, prefix, metadata=None: comfy.supported_models.Flux(dict(TINY_UNET_CONFIG)))
    return "tiny-flux.safetensors"


@pytest.mark.parametrize(("weight_dtype", "torch_dtype", "storage"), [
    ("fp8_e4m3fn", torch.float8_e4m3fn, DType.FP8),
    ("fp8_e4m3fn_fast", torch.float8_e4m3fn, DType.FP8),
    ("fp8_e5m2", torch.float8_e5m2, DType.FP8_E5M2),
])
def test_unetloader_fp8_weights_under_a_plan_equal_the_same_fp8_model(
        comfy, unet_file, weight_dtype, torch_dtype, storage):
    """The plan describes each tensor as ComfyUI stores it (biases and norm scales in fp8
    too); ComfyUI's manual-cast ops upcast per layer as without the plan."""
    from comfyui_nodes.patcher import attach_plan, diffusion_model
    from runtime.families import family_of_module
    from runtime.inventory import inventory_of_module

    (patcher,) = comfy_nodes().UNETLoader().load_unet(unet_file, weight_dtype)
    module = diffusion_model(patcher)
    assert {p.dtype for p in module.parameters()} == {torch_dtype}
    plain = sample(patcher)
    comfy.model_management.unload_all_models()

    inv = inventory_of_module(module, family_of_module(module), "tiny-flux", storage)
    assert inv.blocks[0].bytes_by_dtype == {storage.value: inv.blocks[0].bytes}
    plan = build_plan(inv, {"double_blocks.1", "single_blocks.0", "single_blocks.4"},
                      workload=Workload(height=32, width=32, text_tokens=16),
                      target=Target("cpu", 1 << 30), prefetch_depth=2)
    planned, attachment = attach_plan(patcher, plan)
    assert torch.equal(sample(planned), plain)
    assert attachment.last_stats.streamed_blocks == 3
    comfy.model_management.unload_all_models()
    assert {p.dtype for p in module.parameters()} == {torch_dtype}


def test_unetloader_fp8_weights_under_the_auto_node(comfy, unet_file):
    from comfyui_nodes.nodes import OffloadPlanAuto
    from comfyui_nodes.patcher import attachment_of, diffusion_model

    (patcher,) = comfy_nodes().UNETLoader().load_unet(unet_file, "fp8_e4m3fn")
    plain = sample(patcher)
    comfy.model_management.unload_all_models()
    weights = sum(p.numel() for p in diffusion_model(patcher).parameters())  # one byte each
    planned, _ = OffloadPlanAuto().auto(patcher, 0.9 * weights / 2**30)["result"]
    assert torch.equal(sample(planned), plain)
    assert torch.equal(sample(planned, seed=7), plain)
    handle = attachment_of(planned).handle
    assert handle.tuned and handle.plan.model.storage_dtype is DType.FP8
