"""The "Offload plan: auto" node on ComfyUI models no adapter describes: tiny real ComfyUI Wan,
Qwen-Image, SD3 (MMDiT) and SDXL (UNet) built by ComfyUI's own supported-model classes, sampled
through `comfy.sample.sample`, bitwise equal to plain sampling, the first step measured and the
tuned plan in force from the second, kept for the next prompt.

ComfyUI comes from the pinned sdist (tests/comfy_fixtures.py); without it these tests skip.
"""

from __future__ import annotations

import pytest
import torch

from comfy_fixtures import sample_tiny, tiny_comfy_patcher
from comfy_fixtures import comfy, isolated_comfy  # noqa: F401 (fixtures: ComfyUI, a private store)

BUDGET = 0.9  # of the model's weight bytes


def _auto(patcher, vram_gb: float):
    from comfyui_nodes.nodes import OffloadPlanAuto
    from comfyui_nodes.patcher import attachment_of

    out = OffloadPlanAuto().auto(patcher, vram_gb)
    planned, text = out["result"]
    assert out["ui"]["text"] == [text] and text.startswith("auto: measured on the first")
    return planned, attachment_of(planned)


def _weight_bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in module.parameters())


@pytest.mark.parametrize(
    ("kind", "cls"),
    [("wan", "WanModel"), ("qwen-image", "QwenImageTransformer2DModel"),
     ("sd3", "OpenAISignatureMMDITWrapper"), ("sdxl", "UNetModel")],
)
def test_auto_node_samples_bitwise_equal_and_tunes_from_the_first_step(comfy, kind, cls):
    from comfyui_nodes.patcher import diffusion_model

    patcher = tiny_comfy_patcher(kind)
    module = diffusion_model(patcher)
    assert type(module).__name__ == cls
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    plain = sample_tiny(patcher, kind)
    comfy.model_management.unload_all_models()

    # weights and activations are alike in size here: 90 % of the weights streams about half
    planned, attachment = _auto(patcher, BUDGET * _weight_bytes(module) / 2**30)
    assert torch.equal(sample_tiny(planned, kind), plain)
    handle = attachment.handle
    assert handle.tuned, f"no tuned plan after the first step ({handle.note})"
    assert 0 < handle.stats.streamed_blocks < len(handle.plan.blocks)
    report = attachment.last_report
    assert report.streamed_blocks == handle.stats.streamed_blocks and not report.reused
    # the next prompt: the tuned plan, its packs kept
    assert torch.equal(sample_tiny(planned, kind, seed=7), plain)
    assert attachment.last_report.reused and attachment.applied == 1
    comfy.model_management.unload_all_models()
    assert attachment.handle is None
    for name, param in module.named_parameters():
        assert torch.equal(param.detach(), before[name]), name


def test_a_second_auto_node_starts_from_the_stored_plan(comfy):
    from comfyui_nodes.patcher import diffusion_model

    patcher = tiny_comfy_patcher("wan")
    budget = BUDGET * _weight_bytes(diffusion_model(patcher)) / 2**30
    planned, first = _auto(patcher, budget)
    plain = sample_tiny(planned, "wan")
    tuned = first.handle.plan
    comfy.model_management.unload_all_models()
    again, second = _auto(patcher, budget)
    assert torch.equal(sample_tiny(again, "wan"), plain)
    assert second.handle.source == "stored plan" and second.handle.plan == tuned
