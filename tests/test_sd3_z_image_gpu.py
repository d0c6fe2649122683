"""SD3.5 and Z-Image on CUDA: their tiny models profiled for real, and `apply_plan` with a
slowed copy stream giving exactly the plain model's output. Skipped without CUDA (see
conftest)."""

from __future__ import annotations

import pytest
import torch

from runtime.catalog import get_model
from runtime.dtypes import DType
from runtime.families import get_family
from runtime.inventory import inventory
from runtime.plan import Target, build_plan
from runtime.random_weights import random_model
from tests.test_engine_gpu import _slow_copies
from tests.test_family_contract import placements, workload_of

pytestmark = pytest.mark.gpu
MODELS = [pytest.param(m, id=m) for m in ("tiny-sd3", "tiny-z-image")]


@pytest.mark.parametrize("model_id", MODELS)
def test_profiled_on_cuda(model_id):
    from profiler.run import profile_model

    spec = get_model(model_id)
    profile = profile_model(model_id, spec.workload("64x64"), DType.BF16, "cuda:0")
    assert "estimated" not in profile.source  # activation measured with the allocator
    assert [b.bytes for b in profile.blocks] == [b.bytes for b in inventory(model_id, DType.BF16).blocks]
    for block in profile.blocks:
        assert 0 < block.compute_ms < 1_000 and block.activation_bytes > 0


@pytest.mark.parametrize("model_id", MODELS)
def test_apply_plan_on_cuda_with_slow_copies_is_exact(monkeypatch, cuda_device, model_id):
    from runtime.apply import apply_plan

    spec = get_model(model_id)
    adapter = get_family(spec.family)
    workload = workload_of(spec.family, model_id)

    def cuda_forward(model):
        return forward_on(model, adapter, workload, cuda_device)

    expected = cuda_forward(random_model(model_id).to(cuda_device))
    inv = inventory(model_id)
    model = random_model(model_id)
    _slow_copies(monkeypatch)
    for placement, streamed_idx in placements(len(inv.blocks)).items():
        for depth in (1, 2, 3):
            streamed = {inv.blocks[i].name for i in streamed_idx}
            plan = build_plan(inv, streamed, workload=workload, target=Target("cuda", 1 << 30),
                              prefetch_depth=depth)
            handle = apply_plan(model, plan, cuda_device)
            try:
                for _ in range(2):
                    assert torch.equal(cuda_forward(model), expected), (placement, depth)
            finally:
                handle.remove()
    assert all(p.device.type == "cpu" for p in model.parameters())


def forward_on(model, adapter, workload, device):
    """tests/test_family_contract.py's forward, with inputs made on `device`; the output
    on the CPU."""
    inputs = adapter.model_inputs(model, workload, device, torch.float32)
    with torch.no_grad():
        out = model(**inputs)
    out = out[0] if isinstance(out, tuple) else out.sample
    return (torch.stack(out) if isinstance(out, list) else out).cpu()

