"""`apply_auto` on model classes that have no family adapter (tests/auto_model_cases.py):
diffusers image and video transformers, UNets, a transformers T5 encoder and a Qwen2 text
model, each from a tiny config on CPU, given half its bytes. The first forward runs with every
block streamed; the tuned plan takes over from the second; every forward is bit-identical to
the plain model's, and `remove()` gives back every tensor as it was."""

from __future__ import annotations

import pytest
import torch

from auto_model_cases import CASES
from planner.app.auto import apply_auto
from runtime.families import family_of_module
from runtime.errors import UserError



def _out(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def _snapshot(model):
    return {n: (t.device, t.dtype, t.detach().clone())
            for n, t in list(model.named_parameters()) + list(model.named_buffers())}


def test_the_cases_span_image_video_unet_and_text_and_have_no_adapter():
    modalities = {c.modality for c in CASES.values()}
    assert {"image", "video", "unet", "text"} <= modalities
    assert sum(1 for c in CASES.values() if c.modality != "text") >= 15
    for name in ("T5EncoderModel", "Qwen2Model"):
        assert CASES[name].modality == "text"
    for name, case in CASES.items():
        with torch.device("meta"):
            model = case.build()
        with pytest.raises(UserError):
            family_of_module(model)  # no class here has a family adapter (runtime/families)


@pytest.mark.parametrize("name", sorted(CASES))
def test_apply_auto_streams_about_half_and_is_bit_identical(name, tmp_path):
    case = CASES[name]
    torch.manual_seed(0)
    model = case.build()
    inputs = case.inputs()
    with torch.no_grad():
        want = _out(model(**inputs))
    before = _snapshot(model)
    total = sum(t.numel() * t.element_size() for t in model.parameters())
    handle = apply_auto(model, vram=total // 2, device="cpu", store=f"sqlite:///{tmp_path}/s.db")
    try:
        n = len(handle.plan.blocks)
        assert n >= 5
        assert handle.stats.streamed_blocks == n and handle.stats.slots == 1  # always fits
        with torch.no_grad():
            first = _out(model(**inputs))
            assert handle.tuned and handle.source == "measured"
            tuned = handle.stats
            second = _out(model(**inputs))
            third = _out(model(**inputs))
        for got in (first, second, third):
            assert torch.equal(got, want)
        assert 1 <= tuned.resident_blocks and n // 2 - 1 <= tuned.streamed_blocks < n, tuned
        assert tuned.device_weight_bytes + handle.profile.activation_peak_bytes \
            + handle.profile.workspace_bytes <= total // 2
        assert handle.resyncs == 0  # the recorded order is the order the blocks run
    finally:
        handle.remove()
    after = _snapshot(model)
    assert after.keys() == before.keys()
    for key, (device, dtype, value) in before.items():
        assert after[key][:2] == (device, dtype) and torch.equal(after[key][2], value), key
