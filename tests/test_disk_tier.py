"""The disk tier on tiny-flux (CPU): streamed blocks read each use from a pack file with
direct I/O give bit-identical outputs, every parameter holds its own values after a forward,
the page cache does not keep the pack's bytes, and `remove()` deletes the file."""

from __future__ import annotations

import ctypes
import mmap
import os

import pytest
import torch

from runtime.apply import apply_plan
from runtime.engine import disk_tier
from runtime.plan import HostMemory, Tier, dumps_plan, loads_plan
from tests.conftest import build_tiny_flux
from tests.test_engine import N_BLOCKS, plan_for, run


@pytest.fixture(autouse=True)
def pack_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANNER_DISK_TIER_DIR", str(tmp_path / "packs"))
    return tmp_path / "packs"


@pytest.fixture(scope="module")
def plain_outputs():
    return run(build_tiny_flux())


def disk_plan(model, streamed, on_disk, depth=2):
    plan = plan_for(model, streamed, depth, HostMemory.PINNED)
    names = {plan.blocks[i].name for i in on_disk}
    import dataclasses

    blocks = tuple(dataclasses.replace(b, tier=Tier.DISK) if b.name in names else b for b in plan.blocks)
    return dataclasses.replace(plan, blocks=blocks)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("on_disk", [[0], [1, 4, 6], list(range(N_BLOCKS))])
def test_disk_tier_outputs_bitwise_identical(depth, on_disk, plain_outputs, pack_dir):
    model = build_tiny_flux()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    handle = apply_plan(model, disk_plan(model, list(range(N_BLOCKS)), on_disk, depth), "cpu")
    assert len(list(pack_dir.iterdir())) == 1
    got = run(model)  # two forwards: the reads wrap around
    assert all(torch.equal(a, b) for a, b in zip(plain_outputs, got))
    assert handle.resyncs == 0
    for name, p in model.named_parameters():  # between uses, each holds its own values
        assert torch.equal(p.detach(), before[name]), name
    stats = handle.stats
    assert stats.disk_bytes >= sum(4096 for _ in on_disk) and stats.staging_bytes > 0
    handle.remove()
    assert list(pack_dir.iterdir()) == []  # the pack file goes with the plan
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name
    assert torch.equal(run(model)[0], plain_outputs[0])


def test_out_of_turn_forward_resyncs_the_reader(plain_outputs):
    model = build_tiny_flux()
    handle = apply_plan(model, disk_plan(model, [0, 1, 2, 3], [1, 3], depth=1), "cpu")
    blocks = list(model.transformer_blocks)
    with torch.no_grad():  # a partial forward: block 2 runs out of turn
        try:
            blocks[2](hidden_states=torch.zeros(1, 16, blocks[2].norm1.linear.in_features // 6),
                      encoder_hidden_states=torch.zeros(1, 8, blocks[2].norm1.linear.in_features // 6),
                      temb=torch.zeros(1, blocks[2].norm1.linear.in_features // 6),
                      image_rotary_emb=None)
        except Exception:  # noqa: BLE001 - only the ring's position matters here
            pass
    got = run(model)
    assert all(torch.equal(a, b) for a, b in zip(plain_outputs, got))
    assert handle.resyncs >= 1
    handle.remove()


def test_plan_tier_round_trips_and_old_plans_keep_their_text():
    model = build_tiny_flux()
    ram = plan_for(model, [0, 1], 2, HostMemory.PINNED)
    assert '"tier"' not in dumps_plan(ram)  # a RAM-only plan is written as before
    disk = disk_plan(model, [0, 1], [1])
    text = dumps_plan(disk)
    assert text.count('"tier": "disk"') == 1
    assert loads_plan(text) == disk


def test_disk_tier_on_a_resident_block_is_refused():
    from runtime.errors import PlanFormatError

    model = build_tiny_flux()
    text = dumps_plan(plan_for(model, [0], 2)).replace('"placement": "resident",', '"placement": "resident", "tier": "disk",', 1)
    with pytest.raises(PlanFormatError, match="tier"):
        loads_plan(text)


def _resident_pages(path) -> int:
    """Pages of `path` in the page cache (mincore on a mapping that never touches them)."""
    size = os.path.getsize(path)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        pages = -(-size // mmap.PAGESIZE)
        vec = (ctypes.c_ubyte * pages)()
        assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) == 0
        libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))
        return sum(v & 1 for v in vec)
    finally:
        os.close(fd)


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this platform")
def test_direct_reads_leave_the_pack_out_of_the_page_cache(pack_dir):
    model = build_tiny_flux()
    handle = apply_plan(model, disk_plan(model, list(range(N_BLOCKS)), list(range(N_BLOCKS))), "cpu")
    path = next(pack_dir.iterdir())
    pages = os.path.getsize(path) // mmap.PAGESIZE
    run(model)
    if not handle.stats.direct_io:
        handle.remove()
        pytest.skip(f"the filesystem of {pack_dir} refuses O_DIRECT")
    assert handle._state.ring.disk.reads >= N_BLOCKS  # one forward's worth, at least
    assert _resident_pages(path) <= pages // 10  # read twice over, kept out of the cache
    # the same file read through the page cache does fill it: the check can fail
    with open(path, "rb") as f:
        f.read()
    assert _resident_pages(path) >= pages * 9 // 10
    handle.remove()
