"""The cost model's overheads (event-wait latency, host launch time per block, a synchronised
forward's head start) and its use of `runtime.schedule` for the ring's rule."""

from __future__ import annotations

import dataclasses

import pytest

from planner.costmodel import CUDA_OVERHEADS, NO_OVERHEADS, CostModel, Layout, Overheads, Stream
from runtime.plan import CastMode
from runtime.schedule import ring_of
from tests.test_costmodel import PIN, profile_for, toy_inventory


def test_a_cpu_profile_has_no_overheads_and_a_cuda_one_has_the_traces():
    inv = toy_inventory()
    assert CostModel(inv, profile_for(inv, 1)).overheads == NO_OVERHEADS
    assert CostModel(inv, profile_for(inv, 1, device="cuda:0")).overheads == CUDA_OVERHEADS


def test_the_event_wait_is_paid_only_where_a_stream_waits():
    # copy 4 ms, compute 1 ms, depth 2: compute waits for every copy (+ the latency), copies
    # never wait for a slot; with 2 ms of compute per block nothing changes for the copies
    inv = toy_inventory()
    prof = profile_for(inv, 1, under_compute_gbps=0.25)
    layout = Layout.uniform([1, 1, 1], CastMode.PRE, 2, PIN)
    bare = CostModel(inv, prof, NO_OVERHEADS).predict(layout)
    waits = CostModel(inv, prof, Overheads(event_wait_us=100.0)).predict(layout)
    assert waits.step_ms == pytest.approx(bare.step_ms)  # copy-bound: the copy stream sets the pace
    assert _compute_after_its_copy(bare) == pytest.approx([0.0] * 3)
    assert _compute_after_its_copy(waits) == pytest.approx([0.1] * 3)
    # depth 1: each copy waits for its slot and each compute for its copy: two waits per block
    one = dataclasses.replace(layout, depth=1)
    assert CostModel(inv, prof, Overheads(event_wait_us=100.0)).step_ms(one) == pytest.approx(
        CostModel(inv, prof, NO_OVERHEADS).step_ms(one) + 3 * 0.2)


def _compute_after_its_copy(prediction) -> list[float]:
    copies = [e for e in prediction.timeline if e.stream is Stream.COPY]
    return [
        e.start_ms - max(c.end_ms for c in copies if c.block == e.block and c.end_ms <= e.start_ms)
        for e in prediction.timeline if e.stream is Stream.COMPUTE and e.block != "non-block"
    ]


def test_blocks_cheaper_than_their_launch_run_at_the_hosts_pace():
    inv = toy_inventory()
    prof = profile_for(inv, 0.2)
    resident = Layout.uniform([0, 0, 0], CastMode.PRE, 1, PIN)
    # the host enqueues the non-block modules and three blocks: 4 x 0.5 ms
    assert CostModel(inv, prof, Overheads(host_block_us=500.0)).step_ms(resident) == pytest.approx(2.0)
    assert CostModel(inv, prof, Overheads(host_block_us=100.0)).step_ms(resident) == pytest.approx(0.6)


def test_a_host_behind_the_device_issues_the_prefetch_late():
    # copy 1 ms, compute 0.2 ms, host 2 ms per block: the copy issued after block g's compute
    # leaves when the host got there, so the step is the host's: (non-block + 3 blocks) x 2 ms
    inv = toy_inventory()
    prof = profile_for(inv, 0.2, under_compute_gbps=1.0)
    layout = Layout.uniform([1, 0, 1], CastMode.PRE, 1, PIN)
    model = CostModel(inv, prof, Overheads(host_block_us=2000.0))
    assert model.step_ms(layout) == pytest.approx(8.0)
    assert CostModel(inv, prof, NO_OVERHEADS).step_ms(layout) < 3.0


def test_a_synchronised_forward_starts_behind_the_host():
    inv = toy_inventory()
    prof = profile_for(inv, 1)
    layout = Layout.uniform([0, 0, 0], CastMode.PRE, 1, PIN)
    head = CostModel(inv, prof, Overheads(forward_start_us=700.0)).synchronized_step_ms(layout)
    assert head == pytest.approx(CostModel(inv, prof, NO_OVERHEADS).synchronized_step_ms(layout) + 0.7)


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_the_copies_follow_the_schedule(depth):
    # the cost model asks runtime.schedule which block each copy carries: the recorded copy
    # order of a step is the schedule's uses, in order
    inv = toy_inventory(6)
    prof = profile_for(inv, [1, 2, 1, 3, 1, 1], under_compute_gbps=0.5)
    streamed = [1, 0, 1, 1, 0, 1]
    model = CostModel(inv, prof, CUDA_OVERHEADS)
    timeline = model.predict(Layout.uniform(streamed, CastMode.PRE, depth, PIN)).timeline
    ring = ring_of(streamed, depth)
    copied = [e.block for e in sorted((e for e in timeline if e.stream is Stream.COPY), key=lambda e: e.start_ms)]
    first = next(g for g in range(100) if ring.block_of_use(g) == int(copied[0].split(".")[1]) and g >= ring.m)
    assert copied == [f"blocks.{ring.block_of_use(g)}" for g in range(first, first + len(copied))]


@pytest.mark.parametrize("depth", [1, 2, 4, 9])
def test_a_whole_step_of_uses_is_the_schedules_rule(depth):
    ring = ring_of([True, False, True, True, False, False, True, True], depth)
    for step in (0, 1, 5):
        expected = []
        for position in range(ring.num_blocks):
            use = ring.use_at(step, position)
            expected.append(None if use is None else (use, ring.copy_after(use), ring.block_of_use(ring.copy_after(use))))
        assert ring.step_uses(step) == tuple(expected)


def test_the_uses_prefetched_before_a_step_are_the_ones_copied_after_the_last_step():
    ring = ring_of([True, False, True, True], 2)
    assert list(ring.prefetched(0)) == list(ring.initial_copies())
    last_uses = [u for u in ring.step_uses(0) if u is not None][-ring.slots:]
    assert [nxt for _, nxt, _ in last_uses] == list(ring.prefetched(1))
