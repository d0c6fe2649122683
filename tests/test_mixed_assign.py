"""`planner.mixed`: format assignments under a summed error budget, and the profile of a mixed
inventory (pure library, no model)."""

from __future__ import annotations

from planner.mixed import assign_formats, assignments, profile_for
from runtime.analysis.mixed import converted_inventory
from runtime.dtypes import DType
from runtime.inventory import inventory
from test_costmodel import profile_for as hand_made

Q8, Q4, F8 = DType.Q8_0, DType.Q4_K, DType.FP8


def test_the_cheapest_bytes_per_error_come_first_and_the_sum_stays_under():
    errors = {"a": {Q8: 0.01, Q4: 0.10}, "b": {Q8: 0.02, Q4: 0.03}, "c": {Q8: 0.5}}
    saved = {"a": {Q8: 100, Q4: 150}, "b": {Q8: 100, Q4: 150}, "c": {Q8: 100}}
    a = assign_formats(errors, saved, 0.05)
    assert dict(a.formats) == {"a": Q8, "b": Q4}  # b's q4_k beats its q8_0 within the budget
    assert abs(a.predicted_error - 0.04) < 1e-12 and a.saved_bytes == 250
    assert assign_formats(errors, saved, 0.005).formats == {}
    everything = assign_formats(errors, saved, 10.0)
    assert dict(everything.formats) == {"a": Q4, "b": Q4, "c": Q8}


def test_levels_give_distinct_assignments_largest_budget_first():
    errors = {"a": {Q8: 0.01}, "b": {Q8: 0.02}, "c": {Q8: 0.04}}
    saved = {name: {Q8: 100} for name in errors}
    found = assignments(errors, saved, 0.08)
    assert [sorted(a.formats) for a in found] == [["a", "b", "c"], ["a", "b"], ["a"]]
    assert all(a.predicted_error <= 0.08 for a in found)


def test_a_mixed_profile_prices_the_converted_blocks_only():
    plain = inventory("tiny-flux")
    mixed = converted_inventory(plain, {"transformer_blocks.0": Q8, "single_transformer_blocks.2": F8})
    profile = profile_for(hand_made(plain, 1.0), mixed, memory_gbps=100.0)
    for p, b, orig in zip(profile.blocks, mixed.blocks, plain.blocks):
        assert p.bytes == b.bytes
        assert (p.cast_ms > 0) == (b.bytes != orig.bytes)
