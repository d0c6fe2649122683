"""apply_auto on CUDA: the first forward measured with CUDA events and allocator statistics,
the tuned plan from the second forward, every forward bit-identical, the peak within budget."""

from __future__ import annotations

import pytest
import torch

from auto_model_cases import CASES
from planner.app.auto import apply_auto

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["SanaTransformer2DModel", "UNet2DModel", "Qwen2Model"])
def test_apply_auto_on_cuda(name, cuda_device, tmp_path):
    case = CASES[name]
    torch.manual_seed(0)
    model = case.build()
    inputs = {k: v.to(cuda_device) if isinstance(v, torch.Tensor) else v
              for k, v in case.inputs().items()}
    model.to(cuda_device)
    with torch.no_grad():
        want = model(**inputs)[0]
    model.to("cpu")
    torch.cuda.synchronize(cuda_device)
    total = sum(t.numel() * t.element_size() for t in model.parameters())
    budget = torch.cuda.memory_allocated(cuda_device) + total  # room for all, measured honestly
    handle = apply_auto(model, vram=budget, device=cuda_device, store=f"sqlite:///{tmp_path}/s.db")
    try:
        with torch.no_grad():
            for _ in range(3):
                assert torch.equal(model(**inputs)[0], want)
        profile = handle.profile
        assert handle.tuned and profile.device.startswith("cuda")
        assert all(b.compute_ms > 0 for b in profile.blocks)
        assert profile.activation_peak_bytes > 0 and profile.bandwidth.pinned_gbps > 0
        assert handle.plan.predictions.peak_vram_bytes <= budget
    finally:
        handle.remove()
    assert all(p.device.type == "cpu" for p in model.parameters())
