"""The peers' size-ordered fills on a block list whose blocks differ in size.

SD3.5 Medium's one kind, `joint`, holds three sizes: 13 dual-attention blocks (101.5 M
parameters), 10 plain ones (85.0 M) and the context-pre-only last block (54.3 M). Forge fills
free VRAM smallest block first and mold largest first: block by block, whatever their kind.
"""

from __future__ import annotations

import pytest

from planner.policies import Policy, policy_candidate
from planner.search import Evaluator
from planner.space import Pattern
from runtime.workload import CfgMode


@pytest.fixture(scope="module")
def medium():
    from profiler.reference import reference_profile
    from runtime.catalog import get_model
    from runtime.inventory import inventory

    workload = get_model("sd3.5-medium").workload("1024x1024")
    inv = inventory("sd3.5-medium")
    return Evaluator(inv, {CfgMode.BATCHED: reference_profile("rtx-4060", "sd3.5-medium", workload)})


def _resident(ev, c) -> list[int]:
    return [i for i, s in enumerate(ev.space.streamed_flags(c)) if not s]


def _only(ev, position: int):
    streamed = tuple(i != position for i in range(ev.space.num_blocks))
    from planner.space import explicit_candidate

    base = ev.space.candidate({r.kind: 0 for r in ev.space.kinds}, Pattern.PREFIX, 1,
                              ev.space.casts[0], ev.space.hosts[0], CfgMode.BATCHED)
    return explicit_candidate(ev.space, streamed, base.depth, base.cast, base.host_memory, base.cfg)


def test_medium_has_three_block_sizes_in_one_kind(medium):
    sizes = [b.params for b in medium.inventory.blocks]
    assert {b.kind for b in medium.inventory.blocks} == {"joint"}
    assert len(set(sizes[:13])) == len(set(sizes[13:23])) == 1
    assert sizes[0] > sizes[13] > sizes[23]


@pytest.mark.parametrize("policy", [Policy.SMALLEST_FIRST, Policy.LARGEST_FIRST])
def test_a_block_too_large_is_passed_over_for_a_smaller_one(medium, policy):
    last = medium.space.num_blocks - 1
    budget = medium.peak(_only(medium, last))  # room for the last, smallest block only
    chosen = policy_candidate(policy, medium.space, medium.peak, budget)
    assert _resident(medium, chosen) == [last]
    assert medium.peak(chosen) <= budget


def test_largest_and_smallest_first_keep_different_blocks_of_one_kind(medium):
    budget = medium.peak(_only(medium, 0))  # room for one dual-attention block
    largest = policy_candidate(Policy.LARGEST_FIRST, medium.space, medium.peak, budget)
    smallest = policy_candidate(Policy.SMALLEST_FIRST, medium.space, medium.peak, budget)
    assert _resident(medium, largest) == [0]
    # the last block (54 M) fits; a plain one (85 M) more does not
    assert _resident(medium, smallest) == [medium.space.num_blocks - 1]


def test_fills_of_equal_sized_kinds_stay_structured():
    from profiler.reference import reference_profile
    from runtime.catalog import get_model
    from runtime.inventory import inventory

    inv = inventory("flux-dev")
    ev = Evaluator(inv, {CfgMode.NONE: reference_profile("rtx-4060", "flux-dev", get_model("flux-dev").workload())})
    for policy in (Policy.LARGEST_FIRST, Policy.SMALLEST_FIRST):
        chosen = policy_candidate(policy, ev.space, ev.peak, 12 * 2**30)
        assert chosen.pattern is Pattern.PREFIX and chosen.explicit is None
