"""The real floor: hand-computed cases, and no layout that fits the budget ever beats it."""

from __future__ import annotations

import itertools
import random

import pytest

from planner.costmodel import CostModel, Layout
from planner.floor import Group, floor_ms
from runtime.dtypes import DType
from runtime.inventory import BlockInfo, Inventory
from runtime.plan import CastMode, HostMemory
from tests.test_costmodel import profile_for

MB = 10**6


def test_bf16_floor_streams_whole_blocks_and_holds_a_slot_of_the_largest_streamed():
    # two 4 MB and four 1 MB blocks, 1 GB/s (1 MB per ms), 10 ms of compute.
    groups = (Group(2, 4 * MB, 4 * MB, 0.0), Group(4, MB, MB, 0.0))
    assert floor_ms(groups, 10.0, 12 * MB, 1.0, 1) == 10.0  # everything fits
    # 9 MB of room: keep both big ones (8) and stream the four small through a 1 MB slot:
    # 4 ms of transfer, under the compute
    assert floor_ms(groups, 10.0, 9 * MB, 1.0, 1) == 10.0
    # 6 MB of room: a big block resident leaves the other big one streamed, which needs a
    # 4 MB slot (8 > 6), so no big one stays; the 4 MB slot and two small ones fill 6 MB and
    # 10 MB stream: 10 ms a forward, two forwards
    assert floor_ms(groups, 5.0, 6 * MB, 1.0, 2) == pytest.approx(2 * 10.0)


def test_fp8_floor_pre_casts_residents_and_meets_transfer_with_casts():
    # one group of 4 blocks, fp8 1 MB (auto) or bf16 2 MB (pre), cast 1 ms, 1 GB/s
    groups = (Group(4, 2 * MB, MB, 1.0),)
    # room 8 MB: all four resident pre-cast, no casts: compute only
    assert floor_ms(groups, 3.0, 8 * MB, 1.0, 1) == pytest.approx(3.0)
    # room 4 MB: 4 resident in fp8 cast 4 ms (7); 3 resident + a 1 MB slot cast 3 ms (6);
    # 2 resident + slot = 3 MB, the 1 MB left pre-casts one of them: compute 3 + 1, the two
    # streamed cross as bf16, 4 MB = 4 ms: 4; 1 resident: 3 + 0 vs 6 ms of bf16 transfer,
    # meeting at 4.5 with 1.5 blocks sent as fp8; 0 resident meets at 5.5
    assert floor_ms(groups, 3.0, 4 * MB, 1.0, 1) == pytest.approx(4.0)


def _fp8_inventory(n: int, sizes) -> Inventory:
    blocks = tuple(
        BlockInfo(f"blocks.{i}", "double" if sizes[i] > MB else "single", i, sizes[i], {"fp8": sizes[i], "bf16": 1000})
        for i in range(n)
    )
    return Inventory("toy", "flux", DType.FP8, blocks, 500, {"bf16": 1000})


@pytest.mark.parametrize("seed", range(4))
def test_no_layout_within_the_budget_beats_the_floor(seed):
    rng = random.Random(seed)
    sizes = [2 * MB if i % 3 == 0 else MB for i in range(6)]
    inv = _fp8_inventory(6, sizes)
    prof = profile_for(inv, [rng.uniform(0.5, 3) for _ in range(6)], under_compute_gbps=rng.uniform(0.3, 2),
                       cast_ms=rng.uniform(0.05, 1.0), non_block_ms=0.2)
    model = CostModel(inv, prof)
    budget = model.fixed_bytes + int(rng.uniform(3, 9) * MB)
    floor = model.lower_bound_ms(budget)
    fitted = 0
    for streamed in itertools.product((False, True), repeat=6):
        for casts in itertools.product((CastMode.PRE, CastMode.AUTO), repeat=6):
            for depth in (1, 2):
                layout = Layout(streamed, casts, depth, HostMemory.PINNED)
                if model.peak_bytes(layout) <= budget:
                    fitted += 1
                    assert model.step_ms(layout) >= floor * (1 - 1e-9)
    assert fitted > 0
