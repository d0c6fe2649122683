"""The search: feasible, never worse than the peer policies, deterministic, optimal on a
space small enough to enumerate, and refusing budgets nothing fits."""

from __future__ import annotations

import pytest

from planner.policies import Policy
from planner.search import Settings, exhaustive, search
from planner.space import Pattern, resident_indices, space_of
from runtime.errors import UserError
from runtime.workload import CfgMode
from test_costmodel import profile_for, toy_inventory

GIB = 2**30


@pytest.fixture(scope="module")
def flux():
    """flux-dev's real inventory with made-up times: 60 ms per double block, 25 per single,
    10 GB/s under compute, so an 8 GiB budget is transfer-bound at depth 1."""
    from runtime.inventory import inventory

    inv = inventory("flux-dev")
    times = [60.0 if b.kind == "double" else 25.0 for b in inv.blocks]
    prof = profile_for(inv, times, under_compute_gbps=10.0, pageable_gbps=4.0, overhead_us=6.0,
                       non_block_ms=5.0, activation=600 * 2**20, workspace=768 * 2**20)
    return inv, {CfgMode.NONE: prof}


def test_spread_pattern_is_evenly_spaced():
    assert resident_indices(19, 3, Pattern.SPREAD) == (3, 9, 15)
    assert resident_indices(4, 2, Pattern.PREFIX) == (0, 1)
    assert resident_indices(4, 2, Pattern.SUFFIX) == (2, 3)
    assert len(set(resident_indices(38, 37, Pattern.SPREAD))) == 37
    with pytest.raises(UserError, match="give 0 to 4"):
        resident_indices(4, 5, Pattern.PREFIX)


def test_tuned_plan_fits_and_beats_every_peer(flux):
    inv, profiles = flux
    result = search(inv, profiles, Settings(8 * GIB, trials=40, seed=0))
    assert result.best.peak_vram_bytes <= 8 * GIB
    fitting = [s for _, s in result.policies if s is not None]
    assert len(fitting) == len(Policy)
    assert all(result.best.step_ms <= s.step_ms for s in fitting)
    # the made-up profile is transfer-bound for the peers: tuning must win clearly
    assert result.best.step_ms < 0.95 * min(s.step_ms for s in fitting)
    peaks = [s.peak_vram_bytes for s in result.pareto]
    assert peaks == sorted(peaks) and [s.step_ms for s in result.pareto] == sorted(
        (s.step_ms for s in result.pareto), reverse=True
    )


def test_same_seed_same_plan(flux):
    inv, profiles = flux
    a = search(inv, profiles, Settings(10 * GIB, trials=30, seed=7))
    b = search(inv, profiles, Settings(10 * GIB, trials=30, seed=7))
    assert a.best == b.best
    assert a.pareto == b.pareto
    assert a.trials == b.trials == 30 + 0  # enqueued seeds count among the trials


def test_search_matches_exhaustive_enumeration(flux):
    inv, profiles = flux
    for budget in (6 * GIB, 12 * GIB):
        tuned = search(inv, profiles, Settings(budget, trials=40, seed=1)).best
        best, scored = exhaustive(inv, profiles, budget)
        assert scored > 100
        assert tuned.step_ms <= best.step_ms * 1.01


def test_fp8_space_offers_both_cast_modes():
    from runtime.dtypes import DType

    inv = toy_inventory(storage=DType.FP8, groups={"fp8": 10**6, "bf16": 1000}, block_bytes=10**6 + 1000)
    space = space_of(inv)
    assert {c.value for c in space.casts} == {"pre", "auto"}
    assert space_of(toy_inventory()).casts == (space_of(toy_inventory()).casts[0],)


def test_impossible_budget_is_refused_with_the_minimum(flux):
    inv, profiles = flux
    with pytest.raises(UserError, match=r"give --vram (\d+\.\d+)GiB or more") as info:
        search(inv, profiles, Settings(1 * GIB, trials=5))
    import re

    from planner.budget import parse_size

    need = parse_size(re.search(r"--vram (\S+)", str(info.value)).group(1))
    assert search(inv, profiles, Settings(need, trials=5)).best.peak_vram_bytes <= need
