"""What a VRAM budget leaves for the plan on CPU, on a reference card and on a measured one."""

from __future__ import annotations

import dataclasses
import math

import pytest

from planner import reserve
from planner.costmodel import CostModel
from tests.test_costmodel import profile_for, toy_inventory

GIB = 2**30


def test_a_cpu_profile_keeps_the_whole_budget():
    inv = toy_inventory()
    model = CostModel(inv, profile_for(inv, 1.0))
    assert model.available_bytes == math.inf
    assert model.usable_bytes(5 * GIB) == 5 * GIB and model.budget_needed(123) == 123


def test_a_reference_card_keeps_a_stated_margin_for_the_context_and_the_allocator():
    from profiler.reference import reference_profile
    from runtime.workload import Workload

    p = reference_profile("rtx-4060", "flux-dev", Workload(1024, 1024, text_tokens=512))
    card = p.machine.gpu_memory_bytes
    assert reserve.available_bytes(p) == card - reserve.CONTEXT_MARGIN_BYTES
    available = reserve.available_bytes(p)
    # a budget as large as the card is the card less the context, less the allocator margin
    assert reserve.usable_bytes(card, available) == int((card - reserve.CONTEXT_MARGIN_BYTES) * 0.98)
    # a smaller budget is what the user gives the allocator, less the margin
    assert reserve.usable_bytes(4 * GIB, available) == int(4 * GIB * 0.98)
    for peak in (1, 10**9, 3 * GIB + 17):
        need = reserve.budget_needed(peak, available)
        assert reserve.usable_bytes(need, available) >= peak > reserve.usable_bytes(need - 1, available)
    assert reserve.budget_needed(card, available) is None  # more than the card can give


def test_a_measured_cuda_profile_of_another_machine_keeps_the_same_margin():
    inv = toy_inventory()
    p = dataclasses.replace(profile_for(inv, 1.0, device="cuda:0"), is_estimate=False)
    p = dataclasses.replace(p, machine=dataclasses.replace(p.machine, gpu_name="NVIDIA elsewhere", gpu_memory_bytes=16 * GIB))
    assert reserve.available_bytes(p) == 16 * GIB - reserve.CONTEXT_MARGIN_BYTES


def test_the_search_refuses_a_budget_the_room_cannot_hold_and_names_one_that_fits():
    from planner.search import Settings, search
    from profiler.reference import reference_profile
    from runtime.errors import UserError
    from runtime.inventory import inventory
    from runtime.workload import CfgMode, Workload

    inv = inventory("tiny-flux")
    prof = reference_profile("rtx-4060", "tiny-flux", Workload(256, 256, text_tokens=16), inv.storage_dtype)
    with pytest.raises(UserError, match="give --vram"):
        search(inv, {CfgMode.NONE: prof}, Settings(1 << 20, trials=2))
    model = CostModel(inv, prof)
    assert model.profile.workspace_bytes < 2**28  # no CUDA context in the workspace any more
    result = search(inv, {CfgMode.NONE: prof}, Settings(256 << 20, trials=5))
    assert result.best.peak_vram_bytes <= result.room_bytes == model.usable_bytes(256 << 20)
    assert result.min_budget_bytes < 256 << 20
