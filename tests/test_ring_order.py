"""The ring's stream operations, recorded through its `_Sync` seam on CPU (where the same calls
are made and wait for nothing), checked against the schedule's ordering rules
(`runtime.schedule.ordering_violations`), and the checker against orders that break them."""

from __future__ import annotations

import pytest
import torch

from runtime.apply import apply_plan
from runtime.engine.ring import recording_stream_ops
from runtime.families import get_family
from runtime.schedule import Op, StreamOp, ordering_violations, ring_of
from runtime.workload import Workload
from tests.conftest import build_tiny_flux
from tests.test_disk_tier import disk_plan
from tests.test_engine import N_BLOCKS, plan_for, run


def _schedule(streamed_idx, depth):
    return ring_of([i in streamed_idx for i in range(N_BLOCKS)], depth)


@pytest.mark.parametrize("streamed_idx, depth", [
    (list(range(N_BLOCKS)), 1), (list(range(N_BLOCKS)), 2), ([0, 2, 4, 6], 3), ([5, 6, 7], 2),
    ([1, 4], 4),
])
def test_the_recorded_order_keeps_the_schedules_rules(streamed_idx, depth):
    model = build_tiny_flux()
    schedule = _schedule(streamed_idx, depth)
    with recording_stream_ops() as ops:
        handle = apply_plan(model, plan_for(model, streamed_idx, depth), "cpu")
        run(model, seeds=(0, 1, 2))
        handle.remove()
    assert ordering_violations(ops, schedule) == []
    kinds = [op.op for op in ops]
    assert kinds[:2] == [Op.ALLOCATED, Op.COPY_WAITS_ALLOCATION]
    uses = 3 * schedule.m
    assert kinds.count(Op.COPY) == schedule.slots + uses  # the first copies, one after each use
    assert kinds.count(Op.COMPUTE_RECORDED) == uses and kinds[-1] is Op.SYNCHRONIZE  # remove
    # every copy into a used slot waited for its previous user's compute event
    assert kinds.count(Op.COPY_WAITS_COMPUTE) == uses


def test_a_block_out_of_turn_synchronises_and_the_order_holds():
    model = build_tiny_flux()
    adapter = get_family("flux")
    streamed_idx, depth = [0, 2, 3, 5, 7], 2
    with recording_stream_ops() as ops:
        handle = apply_plan(model, plan_for(model, streamed_idx, depth), "cpu")
        run(model, seeds=(0,))
        name, kind, block = adapter.blocks(model)[3]  # the third streamed block, out of turn
        inputs = adapter.block_inputs(model, kind, Workload(64, 64, text_tokens=8), "cpu", torch.float32)
        with torch.no_grad():
            block(*inputs.args, **inputs.kwargs)
        run(model, seeds=(1,))
        assert handle.resyncs == 2  # into the lone block, and back to the start of a forward
        handle.remove()
    assert ordering_violations(ops, _schedule(streamed_idx, depth)) == []
    assert [op.op for op in ops].count(Op.SYNCHRONIZE) == 3


def _ops(*items):
    return [StreamOp(Op(op), *rest) for op, *rest in items]


START = [("allocated",), ("copy waits allocation",), ("copy", 0, 0), ("copy recorded", 0, 0),
         ("copy", 1, 1), ("copy recorded", 1, 1)]
USE_0 = [("compute waits copy", 0, 0), ("compute recorded", 0, 0)]


def test_the_checker_accepts_the_rule():
    ops = _ops(*START, *USE_0, ("copy waits compute", 0, 0), ("copy", 0, 2), ("copy recorded", 0, 2))
    assert ordering_violations(ops, ring_of([True] * 3, 2)) == []


@pytest.mark.parametrize("ops, problem", [
    (START[:1] + START[2:], "before the copy stream waited for the allocation"),
    (START + USE_0 + [("copy", 0, 2)], "before the wait on the event of the slot's previous user"),
    (START + USE_0 + [("copy waits compute", 0, 1), ("copy", 0, 2)], "waits for use 1"),
    (START + [("compute recorded", 0, 0)], "without waiting for its copy"),
    (START + [("compute waits copy", 0, 0), ("copy", 0, 2)], "before the compute of the slot's previous user"),
    (START + [("synchronize",), ("copy", 0, 2), ("copy recorded", 0, 2), ("compute waits copy", 0, 0)],
     "refilled"),
    (START + [("copy", 1, 2)], "puts use 2 in slot 0"),
    (START[:2] + [("copy", 0, 0), ("compute waits copy", 0, 0)], "never recorded"),
])
def test_the_checker_names_each_broken_rule(ops, problem):
    schedule = ring_of([True] * 3, 2)
    found = ordering_violations(_ops(*ops), schedule)
    assert found and problem in " ".join(found), found


def test_a_synchronize_settles_what_came_before():
    ops = _ops(*START, *USE_0, ("synchronize",), ("copy", 0, 2), ("copy recorded", 0, 2))
    assert ordering_violations(ops, ring_of([True] * 3, 2)) == []


def test_the_order_holds_with_blocks_on_the_disk_tier(tmp_path, monkeypatch):
    # disk-tier blocks reach their slot through a staging buffer, the same copy ops
    monkeypatch.setenv("PLANNER_DISK_TIER_DIR", str(tmp_path / "packs"))
    model = build_tiny_flux()
    streamed_idx, depth = list(range(N_BLOCKS)), 2
    with recording_stream_ops() as ops:
        handle = apply_plan(model, disk_plan(model, streamed_idx, [1, 4, 6], depth), "cpu")
        run(model, seeds=(0, 1))
        handle.remove()
    assert ordering_violations(ops, _schedule(streamed_idx, depth)) == []
    assert [op.op for op in ops].count(Op.COPY) == 2 + 2 * N_BLOCKS
