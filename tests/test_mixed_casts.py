"""Per-block casts for fp8 storage: the search chooses, the plan carries them, the engine runs them."""

from __future__ import annotations

import torch

from planner.costmodel import CostModel, Layout
from planner.search import Evaluator, Settings, exhaustive, search
from planner.space import space_of
from runtime.dtypes import DType
from runtime.inventory import BlockInfo, Inventory
from runtime.plan import CastMode, HostMemory, Placement, Target, build_plan
from runtime.workload import CfgMode, Workload
from tests.test_costmodel import profile_for

MB = 10**6
PRE, AUTO, PIN = CastMode.PRE, CastMode.AUTO, HostMemory.PINNED


def _toy(n=6):
    blocks = tuple(BlockInfo(f"blocks.{i}", "double", i, MB, {"fp8": MB, "bf16": 1000}) for i in range(n))
    return Inventory("toy", "flux", DType.FP8, blocks, 500, {"bf16": 1000})


def test_a_candidate_casts_streamed_and_resident_blocks_apart():
    space = space_of(_toy())
    c = space.candidate({"double": 3}, *_args(), resident_cast=AUTO, precast=2)
    layout = space.layout(c)
    resident = [i for i, s in enumerate(layout.streamed) if not s]
    assert [layout.casts[i] for i in resident] == [PRE, PRE, AUTO]  # the first two pre-cast
    assert all(layout.casts[i] is AUTO for i, s in enumerate(layout.streamed) if s)
    # normal forms: one cast for all blocks when they agree, pre-casting every resident is `pre`
    assert space.candidate({"double": 3}, *_args(), resident_cast=AUTO).resident_cast is None
    every = space.candidate({"double": 3}, *_args(), resident_cast=AUTO, precast=3)
    assert (every.resident_cast, every.precast) == (PRE, 0)
    assert space.candidate({"double": 0}, *_args(), resident_cast=PRE).resident_cast is None
    assert space.candidate({"double": 6}, *_args(), resident_cast=PRE).cast is PRE


def _args():
    from planner.space import Pattern

    return (Pattern.SPREAD, 2, AUTO, PIN, CfgMode.NONE)


def test_fp8_residents_are_pre_cast_as_far_as_the_vram_left_over_allows():
    inv = _toy()
    prof = profile_for(inv, 2.0, under_compute_gbps=0.5, cast_ms=1.0)
    ev = Evaluator(inv, {CfgMode.NONE: prof})
    c = ev.space.candidate({"double": 2}, *_args(), resident_cast=AUTO)
    # two fp8 residents (1 MB each) and a ring of two 1 MB slots: 1.5 MB more holds one bf16 copy
    budget = ev.peak(c) + int(1.5 * MB)
    filled = ev.with_precast(c, budget)
    assert filled.precast == 1 and ev.peak(filled) <= budget
    assert ev.score(filled).step_ms == ev.score(c).step_ms - 1.0  # one cast fewer per step


def test_the_search_streams_fp8_and_keeps_residents_in_bf16_where_that_wins():
    # transfer-bound (a 1 MB fp8 block takes 2 ms, its bf16 form 4 ms) with an expensive cast
    # (1 ms): streamed blocks should cross as fp8, the resident one should not pay a cast
    inv = _toy()
    prof = profile_for(inv, 2.0, under_compute_gbps=0.5, cast_ms=1.0)
    model = CostModel(inv, prof)
    budget = model.fixed_bytes + 5 * MB
    ev = Evaluator(inv, {CfgMode.NONE: prof})
    uniform = min(
        (ev.score(c) for c in ev.space.enumerate() if c.resident_cast is None and ev.peak(c) <= budget),
        key=lambda s: s.step_ms,
    )
    best = search(inv, {CfgMode.NONE: prof}, Settings(budget, trials=30)).best
    assert best.candidate.cast is AUTO and best.candidate.cast_of_resident is PRE
    assert best.step_ms < uniform.step_ms
    assert best.step_ms == exhaustive(inv, {CfgMode.NONE: prof}, budget)[0].step_ms
    assert best.step_ms >= model.lower_bound_ms(budget)


def test_a_mixed_plan_runs_bit_exact_and_holds_the_predicted_device_bytes():
    from runtime.apply import apply_plan
    from runtime.families import get_family
    from runtime.inventory import inventory_of_module
    from tests.test_engine import _fp8_pair, run

    model, reference = _fp8_pair()
    expected = run(reference, seeds=(0,), dtype=torch.bfloat16)
    inv = inventory_of_module(model, get_family("flux"), "tiny-flux", DType.FP8)
    streamed = [i in (1, 3, 4, 6) for i in range(len(inv.blocks))]
    casts = [AUTO if s else (PRE if i < 2 else AUTO) for i, s in enumerate(streamed)]
    plan = build_plan(inv, {b.name for b, s in zip(inv.blocks, streamed) if s},
                      workload=Workload(64, 64, text_tokens=8), target=Target("test", 1 << 30),
                      prefetch_depth=2, casts={b.name: c for b, c in zip(inv.blocks, casts)})
    assert [b.cast for b in plan.blocks] == casts
    assert [b.placement is Placement.STREAMED for b in plan.blocks] == streamed
    layout = Layout(tuple(streamed), tuple(casts), 2, PIN)
    predicted = CostModel(inv, profile_for(inv, 1.0)).device_weight_bytes(layout)
    handle = apply_plan(model, plan, "cpu")
    try:
        assert all(torch.equal(a, b) for a, b in zip(expected, run(model, seeds=(0,), dtype=torch.bfloat16)))
        assert handle.stats.device_weight_bytes == predicted
        assert model.transformer_blocks[0].attn.to_q.weight.dtype == torch.bfloat16  # resident, pre
        assert model.transformer_blocks[2].attn.to_q.weight.dtype == torch.float8_e4m3fn  # resident, auto
    finally:
        handle.remove()
