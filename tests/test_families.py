"""The FLUX family adapter's inputs and the random-weight models built from the catalog."""

from __future__ import annotations

import pytest
import torch

from runtime.catalog import get_model
from runtime.dtypes import DType, compute_dtype
from runtime.families import family_of_module, get_family
from runtime.inventory import inventory, inventory_of_module
from runtime.random_weights import random_model
from runtime.workload import CfgMode, Workload


@pytest.mark.parametrize("storage", [DType.FP32, DType.BF16, DType.FP8])
def test_random_model_has_the_catalog_inventory(storage):
    model = random_model("tiny-flux", storage)
    adapter = family_of_module(model)
    assert inventory_of_module(model, adapter, "tiny-flux", storage) == inventory("tiny-flux", storage)
    if storage is DType.FP8:
        assert {p.dtype for p in model.parameters() if p.dim() >= 2} == {torch.float8_e4m3fn}
        assert {p.dtype for p in model.parameters() if p.dim() < 2} == {torch.bfloat16}


@pytest.mark.parametrize("cfg, batch", [(CfgMode.NONE, 1), (CfgMode.BATCHED, 2)])
def test_model_inputs_drive_a_whole_forward(cfg, batch):
    model = random_model("tiny-flux")
    workload = Workload(64, 32, batch=1, cfg=cfg, text_tokens=16)
    inputs = get_family("flux").model_inputs(model, workload, "cpu", torch.float32)
    with torch.inference_mode():
        (out,) = model(**inputs)
    image_tokens = (64 // 16) * (32 // 16)
    assert out.shape == (batch, image_tokens, model.config.in_channels)
    assert torch.isfinite(out).all()


def test_block_inputs_fit_each_block_kind(tiny_flux):
    adapter = get_family("flux")
    workload = Workload(32, 32, text_tokens=16)
    for name, kind, block in adapter.blocks(tiny_flux):
        inputs = adapter.block_inputs(tiny_flux, kind, workload, "cpu", torch.float32)
        with torch.inference_mode():
            encoder, hidden = block(*inputs.args, **inputs.kwargs)
        assert hidden.shape == inputs.kwargs["hidden_states"].shape, name
        assert encoder.shape == inputs.kwargs["encoder_hidden_states"].shape, name


@pytest.mark.parametrize("storage", [DType.FP32, DType.BF16, DType.FP8])
@pytest.mark.parametrize("model_id", ["tiny-flux", "tiny-chroma", "tiny-sdxl"])
def test_random_model_drawn_tensor_by_tensor_has_the_catalog_inventory(model_id, storage):
    # the path `tune --verify` and the benchmarks take with fill_device="cuda", here on the CPU
    model = random_model(model_id, storage, fill_device="cpu")
    adapter = family_of_module(model)
    assert inventory_of_module(model, adapter, model_id, storage) == inventory(model_id, storage)
    tensors = list(model.parameters()) + list(model.buffers())
    assert not any(t.is_meta for t in tensors)
    assert all(torch.isfinite(t.float()).all() for t in tensors if t.is_floating_point())
    norms = [p for n, p in model.named_parameters() if p.dim() == 1 and n.endswith("weight")]
    assert norms and all(torch.equal(p.float(), torch.ones_like(p.float())) for p in norms)
    workload = get_model(model_id).workload("64x64")
    inputs = adapter.model_inputs(model, workload, "cpu", compute_dtype(storage).torch())
    if storage is DType.FP32:
        with torch.no_grad():
            out = model(**inputs)
        out = out[0] if isinstance(out, tuple) else out.sample
        assert torch.isfinite(out).all()


@pytest.mark.gpu
def test_random_model_drawn_on_the_gpu_stays_on_the_host(cuda_device):
    model = random_model("tiny-flux", DType.BF16, device="cpu", fill_device=str(cuda_device))
    assert {t.device.type for t in model.parameters()} == {"cpu"}
    assert inventory_of_module(model, family_of_module(model), "tiny-flux", DType.BF16) == \
        inventory("tiny-flux", DType.BF16)
