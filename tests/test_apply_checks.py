"""Plans that do not fit the model are refused before anything is touched; host RAM is
budgeted (pinned falls back to pageable with a warning; too little RAM at all is refused)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from runtime.apply import apply_plan
from runtime.dtypes import DType
from runtime.engine import host_memory
from runtime.errors import PlanMismatchError, UserError
from runtime.inventory import inventory
from runtime.plan import HostMemory, Target, build_plan
from runtime.workload import Workload
from tests.conftest import build_tiny_flux
from tests.test_engine import N_BLOCKS, plan_for, run


def snapshot(model):
    return {
        n: (t, t.data_ptr(), t.dtype, t.device, t.detach().clone())
        for n, t in list(model.named_parameters()) + list(model.named_buffers())
    }


def assert_untouched(model, before):
    after = snapshot(model)
    assert after.keys() == before.keys()
    for name, (t, ptr, dtype, device, value) in before.items():
        t2, ptr2, dtype2, device2, _ = after[name]
        assert t2 is t and ptr2 == ptr and dtype2 == dtype and device2 == device, name
        assert torch.equal(t2.detach(), value), name
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def _refused(model, plan, match):
    before = snapshot(model)
    with pytest.raises(PlanMismatchError, match=match) as info:
        apply_plan(model, plan, "cpu")
    assert "\n" not in str(info.value)
    assert_untouched(model, before)


def test_plan_for_another_model_is_refused(tiny_flux):
    plan = build_plan(inventory("flux-dev"), set(), workload=Workload(1024, 1024),
                      target=Target("test", 8 << 30))
    _refused(tiny_flux, plan, "57 blocks for flux-dev but the model has 8")


def test_wrong_block_count_is_refused(tiny_flux):
    plan = plan_for(tiny_flux, [0])
    plan = dataclasses.replace(plan, blocks=plan.blocks[:-1])
    _refused(tiny_flux, plan, "7 blocks")


def test_wrong_order_is_refused(tiny_flux):
    plan = plan_for(tiny_flux, [0])
    blocks = list(plan.blocks)
    blocks[0], blocks[1] = blocks[1], blocks[0]
    _refused(tiny_flux, dataclasses.replace(plan, blocks=tuple(blocks)), "transformer_blocks.1")


def test_wrong_bytes_are_refused(tiny_flux):
    plan = plan_for(tiny_flux, [0])
    blocks = list(plan.blocks)
    blocks[4] = dataclasses.replace(blocks[4], bytes=blocks[4].bytes + 4)
    _refused(tiny_flux, dataclasses.replace(plan, blocks=tuple(blocks)), "single_transformer_blocks.1")


def test_wrong_kind_is_refused(tiny_flux):
    plan = plan_for(tiny_flux, [0])
    blocks = list(plan.blocks)
    blocks[2] = dataclasses.replace(blocks[2], kind="single")
    _refused(tiny_flux, dataclasses.replace(plan, blocks=tuple(blocks)), "double")


def test_wrong_dtype_is_refused():
    model = build_tiny_flux(dtype=torch.bfloat16)
    fp32_model = build_tiny_flux()
    _refused(model, plan_for(fp32_model, [0, 1]), "is bfloat16 but the plan")
    # same bytes, different dtype: a bf16 plan on an fp16 model
    fp16 = build_tiny_flux(dtype=torch.float16)
    _refused(fp16, plan_for(model, [0], storage=DType.BF16), "is float16 but the plan")


def test_wrong_family_is_refused(tiny_flux):
    plan = plan_for(tiny_flux, [0])
    plan = dataclasses.replace(plan, model=dataclasses.replace(plan.model, family="sd3"))
    _refused(tiny_flux, plan, "sd3 model")


def test_not_a_model_is_refused(tiny_flux):
    with pytest.raises(UserError, match="pass a transformer"):
        apply_plan(object(), plan_for(tiny_flux, [0]), "cpu")
    with pytest.raises(UserError, match="CUDA is not available|not a torch device"):
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        apply_plan(tiny_flux, plan_for(tiny_flux, [0]), "cuda")


def test_pinned_beyond_available_ram_falls_back_to_pageable(monkeypatch):
    model = build_tiny_flux()
    expected = run(model, seeds=(0,))
    monkeypatch.setattr(
        host_memory, "available_host_bytes", lambda: host_memory.SAFETY_MARGIN_BYTES // 2
    )
    plan = plan_for(model, range(N_BLOCKS), host=HostMemory.PINNED)
    with pytest.warns(UserWarning, match="pageable"):
        handle = apply_plan(model, plan, "cpu")
    assert handle.stats.pinned_bytes == 0
    assert handle.stats.pageable_bytes == sum(b.bytes for b in plan.blocks)
    assert torch.equal(run(model, seeds=(0,))[0], expected[0])
    handle.remove()


def test_partly_pinned_when_some_fits(monkeypatch):
    model = build_tiny_flux()
    plan = plan_for(model, range(N_BLOCKS), host=HostMemory.PINNED)
    # packs replace the fp32 originals, so the room is the margin plus the one-block packing
    # peak; one byte short of it leaves exactly the last block pageable
    largest = max(b.bytes for b in plan.blocks)
    monkeypatch.setattr(
        host_memory, "available_host_bytes",
        lambda: host_memory.SAFETY_MARGIN_BYTES + largest - 1,
    )
    with pytest.warns(UserWarning, match="pageable"):
        handle = apply_plan(model, plan, "cpu")
    assert handle.stats.pageable_bytes == plan.blocks[-1].bytes
    assert handle.stats.pinned_bytes == sum(b.bytes for b in plan.blocks[:-1])
    handle.remove()


def test_pageable_plan_does_not_warn(monkeypatch, recwarn):
    model = build_tiny_flux()
    monkeypatch.setattr(host_memory, "available_host_bytes", lambda: 10**6)
    handle = apply_plan(model, plan_for(model, [0, 1], host=HostMemory.PAGEABLE), "cpu")
    assert not [w for w in recwarn if "pageable" in str(w.message)]
    handle.remove()


def test_more_than_all_host_ram_is_refused(monkeypatch):
    model = build_tiny_flux()
    monkeypatch.setattr(host_memory, "available_host_bytes", lambda: 1000)
    _refused(model, plan_for(model, range(N_BLOCKS)), "host RAM")


def test_available_host_bytes_reads_this_machine():
    available = host_memory.available_host_bytes()
    assert 0 < available < 1 << 50
