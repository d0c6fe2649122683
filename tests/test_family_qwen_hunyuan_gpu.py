"""Qwen-Image and HunyuanImage 2.1 on CUDA: the engine's streams and events, not the CPU's
synchronous copies, must still give the plain model's output bit for bit (Qwen-Image's rotary
tables live on the CPU and are copied per device; HunyuanImage's refiner blocks stream inside
a non-block module), and the profiler measures every block kind for real. Skipped without
CUDA (see conftest)."""

from __future__ import annotations

import pytest
import torch

from runtime.catalog import get_model
from runtime.dtypes import DType
from runtime.families import get_family
from runtime.inventory import inventory
from runtime.plan import HostMemory, Target, build_plan
from runtime.random_weights import random_model

pytestmark = pytest.mark.gpu
MODELS = ["tiny-qwen-image", "tiny-hunyuanimage"]
KINDS = {"tiny-qwen-image": {"dual"}, "tiny-hunyuanimage": {"refiner", "dual", "single"}}


@pytest.mark.parametrize("host", list(HostMemory))
@pytest.mark.parametrize("model_id", MODELS)
def test_apply_plan_on_cuda_equals_the_plain_model(cuda_device, model_id, host):
    from runtime.apply import apply_plan

    spec = get_model(model_id)
    adapter = get_family(spec.family)
    workload = spec.workload("64x64")
    plain = random_model(model_id).to(cuda_device)
    inputs = adapter.model_inputs(plain, workload, cuda_device, torch.float32)
    with torch.no_grad():
        expected = plain(**inputs)[0]
    inv = inventory(model_id)
    n = len(inv.blocks)
    model = random_model(model_id)
    for streamed_idx, depth in [(range(n), 1), (range(0, n, 2), 2), (range(n // 2, n), 3)]:
        streamed = {inv.blocks[i].name for i in streamed_idx}
        plan = build_plan(inv, streamed, workload=workload, target=Target("cuda", 1 << 30),
                          prefetch_depth=depth, host_memory=host)
        handle = apply_plan(model, plan, cuda_device)
        try:
            for _ in range(2):  # the second forward runs on the wrapped-around ring
                with torch.no_grad():
                    got = model(**inputs)[0]
                assert torch.equal(got, expected), (sorted(streamed_idx), depth)
            assert handle.resyncs == 0
        finally:
            handle.remove()
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize("model_id", MODELS)
def test_profile_on_cuda_measures_every_kind(model_id):
    from profiler.run import profile_model

    profile = profile_model(model_id, get_model(model_id).workload("256x256"), DType.BF16, "cuda:0")
    assert {b.kind for b in profile.blocks} == KINDS[model_id]
    assert all(b.compute_ms > 0 and b.activation_bytes > 0 for b in profile.blocks)
    assert [b.bytes for b in profile.blocks] == [
        b.bytes for b in inventory(model_id, DType.BF16).blocks
    ]
