"""The engine on CUDA: streams and events really overlap, so delays on the copy stream or on
the compute stream (slot reuse under pressure) must never change the output, and peak VRAM stays within the weights the stats report plus the
plain forward's activations. Skipped without CUDA (see conftest)."""

from __future__ import annotations

import pytest
import torch

from runtime.apply import apply_plan
from runtime.dtypes import DType
from runtime.engine import packing
from runtime.engine.ring import Ring, recording_stream_ops
from runtime.families import get_family
from runtime.plan import CastMode, HostMemory
from runtime.schedule import ordering_violations, ring_of
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


def _slow_compute(model, cycles=2_000_000):
    """Each block's kernels wait `cycles` GPU cycles on the compute stream: registered after
    the plan, the wait runs after the ring pointed the block at its slot, so the copy issued
    behind the block would overwrite the slot while the block has not read it yet, unless the
    copy stream waits for the block's compute event."""
    hooks = []
    for _, _, block in get_family("flux").blocks(model):
        hooks.append(block.register_forward_pre_hook(lambda *_: torch.cuda._sleep(cycles)))
    return hooks


@pytest.mark.parametrize("placement,depth", [
    (list(range(N_BLOCKS)), 1), (list(range(N_BLOCKS)), 2), ([0, 2, 4, 6], 3), ([5, 6, 7], 2),
])
def test_identical_output_with_slow_compute_stream(cuda_device, placement, depth):
    reference = build_tiny_flux().to(cuda_device)
    expected = _outputs(reference, cuda_device)
    model = build_tiny_flux()
    with recording_stream_ops() as ops:  # from the allocation of the slots on
        handle = apply_plan(model, plan_for(model, placement, depth, HostMemory.PINNED), cuda_device)
        hooks = _slow_compute(model)
        got = _outputs(model, cuda_device)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    schedule = ring_of([i in placement for i in range(N_BLOCKS)], depth)
    assert ordering_violations(ops, schedule) == [] and handle.resyncs == 0
    for hook in hooks:
        hook.remove()
    handle.remove()


def test_first_copies_wait_for_the_stream_that_allocated_the_slots(cuda_device):
    # the compute stream still has to read a tensor when it is freed; the caching allocator
    # hands its memory to the ring's slot at once (same stream, same size); the ring's first
    # copy, on the copy stream, must wait for the compute stream before writing there
    block = get_family("flux").blocks(build_tiny_flux())[0][2]
    layout = packing.layout_of(block, True, torch.float32)
    buffers, views = packing.pack_host(layout, True, cuda_device)
    (group, numel), = layout.numel_by_group.items()
    scratch = torch.ones(numel, dtype=DType(group).torch(), device=cuda_device)
    torch.cuda._sleep(500_000_000)  # a few hundred ms of compute stream before the read
    doubled = scratch * 2
    address = scratch.data_ptr()
    del scratch
    ring = Ring(ring_of([True], 1), [layout], [buffers], [views], cuda_device)
    if ring.slot_buffers[0][group].data_ptr() != address:
        pytest.skip("the allocator placed the slot elsewhere: nothing to race")
    torch.cuda.synchronize(cuda_device)
    assert torch.equal(doubled, torch.full_like(doubled, 2))
    ring.close()
