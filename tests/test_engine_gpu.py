"""The engine on CUDA: streams and events really overlap, so delays on the copy stream must
never change the output, and peak VRAM stays within the weights the stats report plus the
plain forward's activations. Skipped without CUDA (see conftest)."""

from __future__ import annotations

import pytest
import torch

from runtime.apply import apply_plan
from runtime.engine.ring import Ring
from runtime.plan import CastMode, HostMemory
from runtime.dtypes import DType
from tests.conftest import build_tiny_flux
from tests.test_engine import N_BLOCKS, _fp8_pair, flux_inputs, plan_for

pytestmark = pytest.mark.gpu
ALLOCATOR_ROUNDING = 512  # the caching allocator rounds every block up to 512 bytes


def _slow_copies(monkeypatch, cycles=2_000_000):
    """Each ring copy waits `cycles` GPU cycles on the copy stream before it starts."""
    original = Ring._issue_copy

    def delayed(self, use):
        if self.device.type == "cuda":
            with torch.cuda.stream(self.sync.stream):
                torch.cuda._sleep(cycles)
        original(self, use)

    monkeypatch.setattr(Ring, "_issue_copy", delayed)


def _outputs(model, device, dtype=torch.float32, seeds=(0, 1, 2)):
    with torch.no_grad():
        return [model(**flux_inputs(s, dtype, device)).sample.cpu() for s in seeds]


@pytest.mark.parametrize("host", list(HostMemory))
@pytest.mark.parametrize("placement,depth", [
    (list(range(N_BLOCKS)), 1), (list(range(N_BLOCKS)), 2), ([0, 2, 4, 6], 3), ([5, 6, 7], 2),
])
def test_identical_output_with_slow_copy_stream(monkeypatch, cuda_device, placement, depth, host):
    reference = build_tiny_flux().to(cuda_device)
    expected = _outputs(reference, cuda_device)
    model = build_tiny_flux()
    _slow_copies(monkeypatch)
    handle = apply_plan(model, plan_for(model, placement, depth, host), cuda_device)
    got = _outputs(model, cuda_device)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    if host is HostMemory.PINNED:
        assert all(b.is_pinned() for pack in handle._state.host_buffers for b in pack.values())
    handle.remove()
    assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.parametrize("cast", list(CastMode))
def test_fp8_on_cuda_matches_cast_reference(monkeypatch, cuda_device, cast):
    model, reference = _fp8_pair()
    expected = _outputs(reference.to(cuda_device), cuda_device, torch.bfloat16)
    _slow_copies(monkeypatch)
    plan = plan_for(model, [0, 1, 3, 4, 6], depth=2, cast=cast, storage=DType.FP8)
    handle = apply_plan(model, plan, cuda_device)
    got = _outputs(model, cuda_device, torch.bfloat16)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    handle.remove()


def _forward_peak(model, device) -> tuple[int, int]:
    """(allocated before the forward, peak during it), inputs already on the device."""
    inputs = flux_inputs(0, torch.float32, device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    with torch.no_grad():
        out = model(**inputs).sample
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return before, peak


def test_peak_vram_within_stats_plus_activations(cuda_device):
    plain = build_tiny_flux().to(cuda_device)
    _forward_peak(plain, cuda_device)  # warm-up: kernels, workspaces
    before, peak = _forward_peak(plain, cuda_device)
    headroom = peak - before
    del plain
    torch.cuda.empty_cache()

    model = build_tiny_flux()
    start = torch.cuda.memory_allocated(cuda_device)
    handle = apply_plan(model, plan_for(model, [0, 2, 3, 5, 7], depth=2), cuda_device)
    allocated = torch.cuda.memory_allocated(cuda_device) - start
    stats = handle.stats
    n_tensors = sum(1 for _ in model.parameters()) + 2 * stats.slots
    assert stats.device_weight_bytes <= allocated
    assert allocated <= stats.device_weight_bytes + n_tensors * ALLOCATOR_ROUNDING
    _forward_peak(model, cuda_device)
    before, peak = _forward_peak(model, cuda_device)
    assert peak - before <= headroom  # inputs and weights are in `before` already
    handle.remove()
