"""Peak VRAM on CUDA: the plan's predicted peak against what torch's allocator held, for a
profile measured on this GPU (workspace measured as it is used). Skipped without CUDA."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("streamed_idx", [[], [1, 3, 4, 6]])
def test_predicted_peak_is_within_3_percent_of_the_allocator_peak(cuda_device, streamed_idx):
    import torch

    from planner.costmodel import CostModel, Layout
    from profiler.run import profile_model
    from runtime.apply import apply_plan
    from runtime.catalog import get_model
    from runtime.families import get_family
    from runtime.inventory import inventory
    from runtime.plan import CastMode, HostMemory, Target, build_plan
    from runtime.random_weights import random_model
    from runtime.workload import Workload

    spec = get_model("tiny-flux")
    workload = Workload(256, 256, text_tokens=16)
    profile = profile_model("tiny-flux", workload, spec.storage_dtype, str(cuda_device))
    inv = inventory("tiny-flux", spec.storage_dtype)
    streamed = [i in streamed_idx for i in range(len(inv.blocks))]
    layout = Layout.uniform(streamed, CastMode.PRE, 2, HostMemory.PINNED)
    predicted = CostModel(inv, profile).peak_bytes(layout)
    plan = build_plan(inv, {b.name for b, s in zip(inv.blocks, streamed) if s}, workload=workload,
                      target=Target("test", 1 << 30), prefetch_depth=2)
    model = random_model("tiny-flux", spec.storage_dtype)
    adapter = get_family(spec.family)
    handle = apply_plan(model, plan, cuda_device)
    try:
        inputs = adapter.model_inputs(model, workload, handle.device, plan.model.compute_dtype.torch())
        with torch.inference_mode():
            model(**inputs)
            torch.cuda.synchronize(cuda_device)
            torch.cuda.reset_peak_memory_stats(cuda_device)
            for _ in range(2):
                model(**inputs)
            torch.cuda.synchronize(cuda_device)
        measured = torch.cuda.max_memory_allocated(cuda_device)
    finally:
        handle.remove()
    assert measured == pytest.approx(predicted, rel=0.03, abs=2**20)
