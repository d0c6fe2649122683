"""apply/remove on CUDA through the fast paths: streamed packs page-locked in place (exactly
their bytes, pinned, none taken from PyTorch's caching host allocator), resident weights
through the staging chunks, and a model bitwise itself after `remove()` (own storages, dtypes,
host device), with apply and remove timed next to plain copies of the same bytes (printed:
run with -s). Skipped without CUDA (see conftest)."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from runtime.apply import apply_plan
from runtime.dtypes import DType
from runtime.engine import host_memory, staging
from runtime.families import get_family
from runtime.inventory import inventory_of_module
from runtime.plan import CastMode, HostMemory, Target, build_plan
from runtime.workload import Workload
from tests.test_engine import _fp8_pair, plan_for, run

pytestmark = pytest.mark.gpu


def _mid_flux(device):
    """flux-dev's blocks in bf16 (one double, two single: 1.25 GB), random, on the host."""
    from runtime.catalog import get_model
    from runtime.random_weights import fill_random_

    config = {**get_model("flux-dev").config, "num_layers": 1, "num_single_layers": 2}
    model = torch.nn.Module.to(get_family("flux").build(config, device="meta"), torch.bfloat16)
    torch.manual_seed(0)
    model = model.to_empty(device=device)
    fill_random_(model)
    return torch.nn.Module.to(model, "cpu").eval()


def _inputs(device):
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=torch.bfloat16)

    return dict(
        hidden_states=rand(1, 16, 64), encoder_hidden_states=rand(1, 8, 4096),
        pooled_projections=rand(1, 768),
        timestep=torch.tensor([0.5], device=device, dtype=torch.bfloat16),
        guidance=torch.tensor([3.5], device=device, dtype=torch.bfloat16),
        img_ids=torch.zeros(16, 3, device=device), txt_ids=torch.zeros(8, 3, device=device),
    )


def _host_pinned_bytes() -> int | None:
    stats = getattr(torch.cuda, "host_memory_stats", None)
    return None if stats is None else stats().get("allocated_bytes.current", 0)


def _timed(fn, device) -> float:
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def test_apply_remove_bitwise_with_timings(cuda_device):
    model = _mid_flux(cuda_device)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        reference = copy.deepcopy(model).to(cuda_device)
        expected = reference(**_inputs(cuda_device)).sample
        del reference
    inv = inventory_of_module(model, get_family("flux"), "flux-dev-1x2", DType.BF16)
    plan = build_plan(inv, {b.name for b in inv.blocks[1:]}, workload=Workload(64, 64),
                      target=Target("test", 1 << 40), host_memory=HostMemory.PINNED)
    streamed = [t.data for b in inv.blocks[1:] for t in model.get_submodule(b.name).parameters()]
    clone_s = _timed(lambda: [t.clone() for t in streamed], torch.device("cpu"))
    pinned_before = _host_pinned_bytes()
    holder = {}
    apply_s = _timed(lambda: holder.setdefault("h", apply_plan(model, plan, cuda_device)),
                     cuda_device)
    handle = holder["h"]
    state = handle._state
    for layout, pack in zip(state.layouts, state.host_buffers):
        for group, buffer in pack.items():
            assert buffer.is_pinned(), group
            assert buffer.untyped_storage().nbytes() == layout.bytes_by_group()[group]
    if pinned_before is not None:
        assert _host_pinned_bytes() == pinned_before, "packs and staging are not PyTorch's"
    with torch.no_grad():
        got = model(**_inputs(cuda_device)).sample
    assert torch.equal(got, expected)
    stats = handle.stats
    remove_s = _timed(handle.remove, cuda_device)
    params = list(model.named_parameters())
    for name, param in params:
        assert param.device.type == "cpu" and param.dtype == before[name].dtype, name
        assert torch.equal(param, before[name]), name
    assert len({p.untyped_storage().data_ptr() for _, p in params}) == len(params)
    packed = stats.pinned_bytes + stats.pageable_bytes
    print(f"\napply {apply_s:.3f} s, remove {remove_s:.3f} s; packed {packed / 2**30:.2f} GiB, "
          f"resident {(stats.resident_bytes + stats.non_block_bytes) / 2**30:.2f} GiB; "
          f"clone of the streamed tensors {clone_s:.3f} s")


@pytest.mark.parametrize("chunk_bytes", [4096, None])
def test_staging_on_cuda_matches_tensor_to(cuda_device, chunk_bytes):
    g = torch.Generator().manual_seed(1)
    sources = [torch.randn(s, generator=g).to(d) for s, d in [
        ((300, 7), torch.float32), ((5000,), torch.bfloat16), ((3,), torch.float32),
        ((64, 64), torch.float8_e4m3fn)]]
    dtypes = [torch.float32, torch.bfloat16, torch.float32, torch.bfloat16]
    up = staging.to_device(sources, dtypes, cuda_device, chunk_bytes=chunk_bytes)
    for u, s, d in zip(up, sources, dtypes):
        assert u.device == cuda_device and torch.equal(u, s.to(device=cuda_device, dtype=d))
    down = staging.to_host(up, [s.dtype for s in sources], chunk_bytes=chunk_bytes)
    for d, s in zip(down, sources):
        assert d.device.type == "cpu" and d.dtype == s.dtype
        assert torch.equal(d.view(torch.uint8), s.view(torch.uint8))


def test_page_lock_registers_and_the_finalizer_unregisters(cuda_device):
    assert host_memory.can_page_lock()
    tensor, pages = host_memory.lockable_empty(1 << 20, torch.float32)
    tensor.fill_(2.0)
    assert host_memory.page_lock(pages, cuda_device) and tensor.is_pinned()
    assert not host_memory.page_lock(pages, cuda_device), "already registered"
    torch.ones(1, device=cuda_device).add_(1)  # no stale error left behind by the refusal
    host_memory._release(pages)
    assert not host_memory.is_page_locked(pages)
    assert host_memory.page_lock(pages, cuda_device), "unregistered, so it registers again"
    on_device = torch.empty_like(tensor, device=cuda_device)
    on_device.copy_(tensor, non_blocking=True)
    assert torch.equal(on_device.cpu(), tensor)


@pytest.mark.parametrize("cast", list(CastMode))
def test_fp8_resident_and_streamed_round_trip_on_cuda(cuda_device, cast):
    model, reference = _fp8_pair()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected = run(reference.to(cuda_device), dtype=torch.bfloat16, device=cuda_device)
    plan = plan_for(model, [0, 3, 5], depth=2, cast=cast, storage=DType.FP8)
    handle = apply_plan(model, plan, cuda_device)
    got = run(model, dtype=torch.bfloat16, device=cuda_device)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    handle.remove()
    for name, param in model.named_parameters():
        assert param.device.type == "cpu" and param.dtype == before[name].dtype, name
        assert torch.equal(param.view(torch.uint8), before[name].view(torch.uint8)), name


def test_planner_pin_torch_falls_back_to_pytorchs_pinned_allocator(monkeypatch):
    """The escape hatch: PLANNER_PIN=torch packs streamed blocks in PyTorch's pinned memory,
    still pinned and still bitwise, with nothing registered in place."""
    monkeypatch.setenv("PLANNER_PIN", "torch")
    host_memory.can_page_lock.cache_clear()
    try:
        assert not host_memory.can_page_lock()
        from runtime.engine.packing import layout_of, pack_host

        block = torch.nn.Linear(64, 64)
        before = block.weight.detach().clone()
        layout = layout_of(block, True, torch.float32)
        buffers, _ = pack_host(layout, True, torch.device("cuda", torch.cuda.current_device()))
        assert all(b.is_pinned() for b in buffers.values())
        assert torch.equal(block.weight.detach(), before)
    finally:
        monkeypatch.delenv("PLANNER_PIN")
        host_memory.can_page_lock.cache_clear()
