"""The cost model against timelines computed by hand on small synthetic models."""

from __future__ import annotations

import dataclasses

import pytest

from planner.costmodel import CostModel, Event, EventKind, Layout, Stream, predict
from profiler.types import Bandwidth, BlockProfile, MachineFacts, Profile
from runtime.dtypes import DType
from runtime.errors import UserError
from runtime.inventory import BlockInfo, Inventory
from runtime.plan import CastMode, HostMemory
from runtime.workload import Workload

MB = 10**6
PIN, PAGE = HostMemory.PINNED, HostMemory.PAGEABLE


def toy_inventory(n: int = 3, block_bytes: int = MB, storage: DType = DType.BF16, groups=None) -> Inventory:
    groups = groups or {storage.value: block_bytes}
    blocks = tuple(BlockInfo(f"blocks.{i}", "double", i, block_bytes // 2, dict(groups)) for i in range(n))
    return Inventory("toy", "flux", storage, blocks, 500, {"bf16": 1000})


def profile_for(inv: Inventory, compute_ms, *, under_compute_gbps=1.0, pageable_gbps=0.5,
                overhead_us=0.0, non_block_ms=0.0, cast_ms=0.0, activation=500, workspace=100,
                workload=None, device="cpu") -> Profile:
    """A hand-made profile of `inv`: `compute_ms` is one number or one per block."""
    times = compute_ms if isinstance(compute_ms, (list, tuple)) else [compute_ms] * len(inv.blocks)
    machine = MachineFacts("fp-toy", "host", "cpu", 0, None, None, None, None, None, None, "2", 2**34)
    blocks = tuple(
        BlockProfile(b.name, b.kind, b.index, b.bytes, float(t), cast_ms, activation)
        for b, t in zip(inv.blocks, times)
    )
    return Profile(
        machine=machine, device=device, model_id=inv.model_id,
        workload=workload or Workload(256, 256, text_tokens=16),
        storage_dtype=inv.storage_dtype, compute_dtype=DType.BF16 if inv.storage_dtype.is_fp8 else inv.storage_dtype,
        bandwidth=Bandwidth(2.0, pageable_gbps, under_compute_gbps, overhead_us),
        blocks=blocks, non_block_ms=non_block_ms, non_block_bytes=inv.non_block_bytes,
        workspace_bytes=workspace, is_estimate=True, source="hand-made for tests",
        tool_version="test", created="2025-01-01T00:00:00+00:00",
    )


def spans(prediction, stream):
    return [(round(e.start_ms, 9), round(e.end_ms, 9), e.block) for e in prediction.timeline if e.stream is stream]


def test_all_resident_is_the_sum_of_compute_with_non_block_first():
    inv = toy_inventory()
    p = predict(inv, profile_for(inv, [2, 3, 4], non_block_ms=1), Layout.uniform([0, 0, 0], CastMode.PRE, 1, PIN))
    assert p.step_ms == 10
    assert spans(p, Stream.COMPUTE) == [(0, 1, "non-block"), (1, 3, "blocks.0"), (3, 6, "blocks.1"), (6, 10, "blocks.2")]
    assert spans(p, Stream.COPY) == []
    assert p.device_weight_bytes == 3 * MB + 1000
    assert p.peak_vram_bytes == 3 * MB + 1000 + 500 + 100


def test_all_streamed_transfer_bound_depth_2():
    # copies of 1 MB at 0.25 GB/s take 4 ms, compute 1 ms: the copy stream never rests.
    inv = toy_inventory()
    p = predict(inv, profile_for(inv, 1, under_compute_gbps=0.25), Layout.uniform([1, 1, 1], CastMode.PRE, 2, PIN))
    assert p.step_ms == pytest.approx(12)
    # steady step (the 4th) starts at 37: copy g ends at 4(g+1), compute g runs right after it
    assert spans(p, Stream.COMPUTE) == [(0, 0, "non-block"), (3, 4, "blocks.0"), (7, 8, "blocks.1"), (11, 12, "blocks.2")]
    assert spans(p, Stream.COPY) == [
        (-1, 3, "blocks.0"), (3, 7, "blocks.1"), (7, 11, "blocks.2"), (11, 15, "blocks.0"), (15, 19, "blocks.1")
    ]
    assert p.device_weight_bytes == 2 * MB + 1000  # two ring slots, nothing resident


def test_all_streamed_compute_bound_depth_1_vs_2():
    # copy 1 ms, compute 5 ms. Depth 1: the single slot frees only when compute ends, so each
    # block pays its copy: 3 x (5 + 1) = 18. Depth 2: copies hide behind compute: 3 x 5 = 15.
    inv = toy_inventory()
    prof = profile_for(inv, 5, under_compute_gbps=1.0)
    d1 = predict(inv, prof, Layout.uniform([1, 1, 1], CastMode.PRE, 1, PIN))
    d2 = predict(inv, prof, Layout.uniform([1, 1, 1], CastMode.PRE, 2, PIN))
    assert d1.step_ms == pytest.approx(18)
    assert d2.step_ms == pytest.approx(15)
    assert spans(d1, Stream.COMPUTE)[1:] == [(1, 6, "blocks.0"), (7, 12, "blocks.1"), (13, 18, "blocks.2")]
    assert d1.peak_vram_bytes == MB + 1000 + 600
    assert d2.peak_vram_bytes == 2 * MB + 1000 + 600


def test_pageable_copies_serialise_with_compute():
    # pageable at 0.5 GB/s: 2 ms per copy, not overlapped even at depth 2: 3 x (5 + 2) = 21
    inv = toy_inventory()
    p = predict(inv, profile_for(inv, 5, pageable_gbps=0.5), Layout.uniform([1, 1, 1], CastMode.PRE, 2, PAGE))
    assert p.step_ms == pytest.approx(21)
    computes = spans(p, Stream.COMPUTE)[1:]
    copies = spans(p, Stream.COPY)
    for (c_start, c_end, _), (k_start, k_end, _) in zip(computes, [c for c in copies if c[0] >= 0]):
        assert k_start == pytest.approx(c_end)  # each copy runs after the compute that frees its slot
    assert [round(b - a, 9) for a, b, _ in computes] == [5, 5, 5]


def test_resident_blocks_hide_the_copy_of_the_next_streamed_one():
    # blocks 0 and 2 streamed, 1 resident (4 ms), compute 1 ms, copy 4 ms, depth 1: the copy
    # of block 2 (issued after block 0) runs under block 1: per step 1 + 4 + wait 0 + 1 ...
    inv = toy_inventory()
    p = predict(inv, profile_for(inv, [1, 4, 1], under_compute_gbps=0.25), Layout.uniform([1, 0, 1], CastMode.PRE, 1, PIN))
    # copy of block 2 starts when block 0 ends (t) and ends t+4 = when block 1 ends: no wait.
    # copy of next block 0 starts when block 2 ends and takes 4 ms: the step is 1 + 4 + 1 + 4 = 10
    assert p.step_ms == pytest.approx(10)
    assert p.device_weight_bytes == 2 * MB + 1000


def test_per_copy_overhead_counts_dtype_groups_and_fp8_cast_modes():
    groups = {"fp8": MB, "bf16": 1000}
    inv = toy_inventory(storage=DType.FP8, block_bytes=MB + 1000, groups=groups)
    prof = profile_for(inv, 5, under_compute_gbps=1.0, overhead_us=500, cast_ms=0.25)
    model = CostModel(inv, prof)
    # pre: 2 MB bf16 + 1000 B bf16 arrive as one bf16 group; auto: fp8 + bf16, two groups
    assert model.copy_ms(0, CastMode.PRE, PIN) == pytest.approx(0.5 + (2 * MB + 1000) / 1e6)
    assert model.copy_ms(0, CastMode.AUTO, PIN) == pytest.approx(1.0 + (MB + 1000) / 1e6)
    auto = model.predict(Layout.uniform([0, 0, 0], CastMode.AUTO, 1, PIN))
    assert auto.step_ms == pytest.approx(3 * 5.25)  # resident blocks cast too under auto
    kinds = [e.kind for e in auto.timeline if e.block == "blocks.0"]
    assert kinds == [EventKind.CAST, EventKind.COMPUTE]
    pre = model.predict(Layout.uniform([0, 0, 0], CastMode.PRE, 1, PIN))
    assert pre.step_ms == pytest.approx(15)
    assert pre.device_weight_bytes == 3 * (2 * MB + 1000) + 1000
    assert auto.device_weight_bytes == 3 * (MB + 1000) + 1000


def test_sequential_cfg_runs_two_forwards_per_step():
    from runtime.workload import CfgMode

    inv = toy_inventory()
    wl = Workload(256, 256, cfg=CfgMode.SEQUENTIAL, text_tokens=16)
    p = predict(inv, profile_for(inv, 5, workload=wl, non_block_ms=1), Layout.uniform([1, 1, 1], CastMode.PRE, 2, PIN))
    assert p.step_ms == pytest.approx(2 * 16)
    assert [e.block for e in p.timeline if e.stream is Stream.COMPUTE].count("blocks.1") == 2


def test_lower_bound_at_a_budget():
    inv = toy_inventory()
    model = CostModel(inv, profile_for(inv, 1, under_compute_gbps=0.25, pageable_gbps=0.1))
    fixed = 1000 + 500 + 100
    assert model.lower_bound_ms(fixed + 3 * MB) == 3  # everything fits: compute only
    # room for 2 MB: one slot (1 MB) + 1 MB resident, so 2 MB must stream at 0.25 GB/s = 8 ms
    assert model.lower_bound_ms(fixed + 2 * MB) == pytest.approx(8)
    best = min(
        model.step_ms(Layout.uniform(s, CastMode.PRE, d, PIN))
        for s in ([1, 0, 1], [0, 1, 1], [1, 1, 0])
        for d in (1, 2)
    )
    assert best >= model.lower_bound_ms(fixed + 2 * MB)


def test_profile_of_other_blocks_is_refused():
    inv = toy_inventory()
    other = toy_inventory(n=4)
    with pytest.raises(UserError, match="does not describe the same blocks"):
        CostModel(inv, profile_for(other, 1))
    with pytest.raises(UserError, match="give one entry per block"):
        CostModel(inv, profile_for(inv, 1)).step_ms(Layout.uniform([1, 1], CastMode.PRE, 1, PIN))


def test_events_are_frozen():
    e = Event(Stream.COPY, 0.0, 1.0, "b", EventKind.COPY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.start_ms = 2.0  # type: ignore[misc]


def test_predicted_device_weight_bytes_match_the_runtime_on_tiny_flux(tiny_flux):
    pytest.importorskip("runtime.apply")
    from runtime.apply import apply_plan
    from runtime.inventory import inventory
    from runtime.plan import Target, build_plan

    inv = inventory("tiny-flux")
    streamed = {"transformer_blocks.1", "single_transformer_blocks.0", "single_transformer_blocks.3"}
    layout = Layout.uniform([b.name in streamed for b in inv.blocks], CastMode.PRE, 2, PAGE)
    predicted = CostModel(inv, profile_for(inv, 1.0)).device_weight_bytes(layout)
    plan = build_plan(
        inv, streamed, workload=Workload(256, 256, text_tokens=16), target=Target("cpu", 2**30),
        prefetch_depth=2, host_memory=PAGE,
    )
    handle = apply_plan(tiny_flux, plan, device="cpu")
    try:
        assert handle.stats.device_weight_bytes == predicted
    finally:
        handle.remove()


@pytest.mark.parametrize("seed", range(6))
def test_a_deeper_ring_never_loses_in_a_denoising_loop(seed):
    # forward after forward with no synchronisation, copy `g + slots` may start no later with
    # more slots, so nothing downstream starts later either: step time never rises with depth
    import random

    rng = random.Random(seed)
    inv = toy_inventory(n=9)
    prof = profile_for(inv, [rng.uniform(0.2, 5) for _ in range(9)], under_compute_gbps=rng.uniform(0.1, 2),
                       overhead_us=rng.uniform(0, 300), non_block_ms=rng.uniform(0, 2))
    model = CostModel(inv, prof)
    for _ in range(10):
        streamed = [rng.random() < 0.6 for _ in range(9)]
        times = [model.step_ms(Layout.uniform(streamed, CastMode.PRE, d, PIN)) for d in range(1, 10)]
        assert all(b <= a + 1e-9 for a, b in zip(times, times[1:])), times


def test_synchronized_forward_waits_for_the_wrap_around_copies():
    # blocks 0 and 1 streamed, 2 resident; compute 1 ms each, copy 4 ms. Between two device
    # synchronisations a forward starts with uses 0 and 1 in the ring (depth 2): compute 0..3,
    # the copy after block 0 (next forward's block 0) runs 1..5, after block 1 runs 5..9.
    inv = toy_inventory()
    model = CostModel(inv, profile_for(inv, 1, under_compute_gbps=0.25))
    assert model.synchronized_step_ms(Layout.uniform([1, 1, 0], CastMode.PRE, 2, PIN)) == pytest.approx(9)
    # depth 1: the copy after block 0 is block 1 itself: 0..1 compute, copy 1..5, compute 5..7,
    # then the next forward's block 0 copies 6..10
    assert model.synchronized_step_ms(Layout.uniform([1, 1, 0], CastMode.PRE, 1, PIN)) == pytest.approx(10)
    # steady (a denoising loop): the wrap-around copies hide behind nothing here either, 8 ms
    assert model.step_ms(Layout.uniform([1, 1, 0], CastMode.PRE, 2, PIN)) == pytest.approx(8)
    all_resident = Layout.uniform([0, 0, 0], CastMode.PRE, 2, PIN)
    assert model.synchronized_step_ms(all_resident) == model.step_ms(all_resident) == 3


def _with_disk(profile, gbps):
    return dataclasses.replace(profile, bandwidth=dataclasses.replace(profile.bandwidth, disk_read_gbps=gbps))


def test_disk_tier_reads_are_a_third_stage_ahead_of_the_copies():
    # 1 MB blocks (aligned to 1,003,520 bytes): compute 1 ms, copies 1 ms at 1 GB/s; the disk at
    # 0.1 GB/s reads a block in 10.0352 ms. Every block on disk: the reads set the pace.
    inv = toy_inventory()
    prof = _with_disk(profile_for(inv, 1, under_compute_gbps=1.0), 0.1)
    ram = Layout.uniform([1, 1, 1], CastMode.PRE, 2, PIN)
    disk = dataclasses.replace(ram, on_disk=(True, True, True))
    model = CostModel(inv, prof)
    assert model.step_ms(ram) == pytest.approx(3)
    read = 1_003_520 / 1e5
    assert model.step_ms(disk) == pytest.approx(3 * read)  # one reader, reads back to back
    # one block of three on disk: its read (10 ms) overlaps the other blocks' compute and copies
    one = dataclasses.replace(ram, on_disk=(False, True, False))
    assert model.step_ms(ram) < model.step_ms(one) < model.step_ms(disk)
    assert model.step_ms(one) >= read - 1e-9  # a step reads it once: never faster than that
    # a faster disk hides behind the copies entirely
    fast = CostModel(inv, _with_disk(prof, 100.0))
    assert fast.step_ms(disk) == pytest.approx(fast.step_ms(ram), rel=0.02)


def test_the_floor_reads_the_fewest_disk_bytes_within_the_host_budget():
    inv = toy_inventory()
    model = CostModel(inv, _with_disk(profile_for(inv, 1), 0.1))
    layout = Layout.uniform([1, 1, 1], CastMode.PRE, 2, PIN)
    plain = model.predict(layout, 10 * MB)
    with_disk = model.predict(layout, 10 * MB, disk_floor_bytes=2 * MB)
    assert with_disk.lower_bound_ms == pytest.approx(max(plain.lower_bound_ms, 20.0))
