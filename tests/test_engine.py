"""The offload engine on tiny-flux (CPU): bit-identical outputs for every placement, fp8 cast
modes, stats from what was allocated, and a `remove()` that puts everything back."""

from __future__ import annotations

import inspect

import pytest
import torch

from runtime.apply import apply_plan
from runtime.dtypes import DType
from runtime.errors import PlanMismatchError
from runtime.families import get_family
from runtime.inventory import device_bytes_by_dtype, inventory_of_module
from runtime.plan import CastMode, HostMemory, Target, build_plan
from runtime.schedule import ring_bytes, ring_of
from runtime.workload import Workload
from tests.conftest import build_tiny_flux

N_BLOCKS = 8  # tiny-flux: 3 double + 5 single


def flux_inputs(seed: int, dtype=torch.float32, device="cpu") -> dict:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    return dict(
        hidden_states=rand(1, 16, 16),
        encoder_hidden_states=rand(1, 8, 32),
        pooled_projections=rand(1, 32),
        timestep=torch.tensor([0.5], device=device, dtype=dtype),
        img_ids=torch.zeros(16, 3, device=device),
        txt_ids=torch.zeros(8, 3, device=device),
        guidance=torch.tensor([3.5], device=device, dtype=dtype),
    )


def run(model, seeds=(0, 1), dtype=torch.float32, device="cpu"):
    with torch.no_grad():
        return [model(**flux_inputs(s, dtype, device)).sample for s in seeds]


def plan_for(model, streamed_idx, depth=2, host=HostMemory.PINNED, cast=CastMode.PRE,
             storage=DType.FP32):
    inv = inventory_of_module(model, get_family("flux"), "tiny-flux", storage)
    streamed = {inv.blocks[i].name for i in streamed_idx}
    return build_plan(inv, streamed, workload=Workload(64, 64, text_tokens=8),
                      target=Target("test", 1 << 30), prefetch_depth=depth,
                      host_memory=host, cast=cast)


PLACEMENTS = {
    "resident": [],
    "streamed": list(range(N_BLOCKS)),
    "spread": list(range(0, N_BLOCKS, 2)),
    "prefix": [0, 1, 2],
    "suffix": [5, 6, 7],
}


@pytest.fixture(scope="module")
def plain_outputs():
    return run(build_tiny_flux())


@pytest.mark.parametrize("host", list(HostMemory))
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_outputs_bitwise_identical(placement, depth, host, plain_outputs):
    model = build_tiny_flux()
    expected = plain_outputs
    handle = apply_plan(model, plan_for(model, PLACEMENTS[placement], depth, host), "cpu")
    got = run(model)  # two forwards: the ring wraps around into the second
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    assert handle.resyncs == 0
    handle.remove()


def test_parameters_point_at_real_weights_between_forwards():
    model = build_tiny_flux()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    handle = apply_plan(model, plan_for(model, range(N_BLOCKS), depth=2), "cpu")
    run(model, seeds=(0,))
    for name, param in model.named_parameters():
        assert isinstance(param, torch.nn.Parameter)
        assert torch.equal(param, before[name]), name
    assert model.transformer_blocks[1].attn.to_q.weight.shape == (32, 32)
    handle.remove()


def test_stats_count_what_was_allocated():
    model = build_tiny_flux()
    streamed_idx = [0, 3, 4, 7]
    plan = plan_for(model, streamed_idx, depth=3)
    inv = inventory_of_module(model, get_family("flux"), "tiny-flux", DType.FP32)
    handle = apply_plan(model, plan, "cpu")
    stats = handle.stats
    streamed_ids = set()
    for i, (_, _, block) in enumerate(get_family("flux").blocks(model)):
        if i in streamed_idx:
            streamed_ids.update(id(t) for t in block.parameters())
    on_device = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in streamed_ids:
            on_device[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    ring = handle.ring_buffers()
    assert len(ring) == 3  # one fp32 buffer per slot
    allocated = sum(on_device.values()) + sum(t.numel() * t.element_size() for t in ring)
    assert stats.device_weight_bytes == allocated
    # ...and equals what the planner predicts from the inventory and the schedule
    groups = [device_bytes_by_dtype(inv.blocks[i], True) for i in streamed_idx]
    schedule = ring_of([i in streamed_idx for i in range(N_BLOCKS)], 3)
    assert stats.ring_bytes == ring_bytes(schedule, groups)
    assert stats.non_block_bytes == inv.non_block_bytes
    assert stats.resident_bytes == sum(
        b.bytes for i, b in enumerate(inv.blocks) if i not in streamed_idx
    )
    assert stats.slots == 3 and stats.streamed_blocks == 4 and stats.resident_blocks == 4
    assert stats.pinned_bytes == sum(inv.blocks[i].bytes for i in streamed_idx)
    assert stats.pageable_bytes == 0
    handle.remove()


def _fp8_pair(seed=0):
    """A model stored in fp8 (2-D weights) and a bf16 reference holding the same values."""
    model = build_tiny_flux(seed, dtype=torch.bfloat16)
    reference = build_tiny_flux(seed, dtype=torch.bfloat16)
    with torch.no_grad():
        for p, r in zip(model.parameters(), reference.parameters()):
            if p.dim() >= 2:
                p.data = p.data.to(torch.float8_e4m3fn)
                r.data = p.data.to(torch.bfloat16)
    return model, reference


@pytest.mark.parametrize("cast", list(CastMode))
@pytest.mark.parametrize("streamed_idx", [[], [0, 2, 3, 5, 7], list(range(N_BLOCKS))])
def test_fp8_storage_matches_model_cast_the_same_way(cast, streamed_idx):
    model, reference = _fp8_pair()
    expected = run(reference, seeds=(0, 1), dtype=torch.bfloat16)
    plan = plan_for(model, streamed_idx, depth=2, cast=cast, storage=DType.FP8)
    handle = apply_plan(model, plan, "cpu")
    got = run(model, seeds=(0, 1), dtype=torch.bfloat16)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    inv = inventory_of_module(model, get_family("flux"), "tiny-flux", DType.FP8)
    pre = cast is CastMode.PRE
    expected_resident = sum(
        sum(device_bytes_by_dtype(b, pre).values())
        for i, b in enumerate(inv.blocks) if i not in streamed_idx
    )
    assert handle.stats.resident_bytes == expected_resident
    weight = model.transformer_blocks[1].attn.to_q.weight
    assert weight.dtype == (torch.bfloat16 if pre and 1 not in streamed_idx else
                            torch.bfloat16 if pre else torch.float8_e4m3fn)
    handle.remove()
    for p in model.parameters():
        assert p.dtype == (torch.float8_e4m3fn if p.dim() >= 2 else torch.bfloat16)


def test_remove_round_trip():
    model = build_tiny_flux()
    params = dict(model.named_parameters())
    values = {n: p.detach().clone() for n, p in params.items()}
    signature = inspect.signature(model.forward)
    forward = model.forward
    expected = run(model)
    handle = apply_plan(model, plan_for(model, [0, 2, 4, 6], depth=2), "cpu")
    run(model, seeds=(5,))
    handle.remove()
    assert not handle.active
    assert dict(model.named_parameters()).keys() == params.keys()
    for name, param in model.named_parameters():
        assert param is params[name], name
        assert torch.equal(param.data, values[name]) and param.device.type == "cpu"
        assert param.dtype == values[name].dtype
    storages = [p.untyped_storage().data_ptr() for p in model.parameters()]
    assert len(set(storages)) == len(storages), "each tensor owns its storage again"
    assert inspect.signature(model.forward) == signature and model.forward == forward
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert all(torch.equal(a, b) for a, b in zip(expected, run(model)))
    handle.remove()  # idempotent


def test_apply_twice():
    model = build_tiny_flux()
    plan = plan_for(model, [1, 3])
    handle = apply_plan(model, plan, "cpu")
    assert apply_plan(model, plan, "cpu") is handle
    other = plan_for(model, [2, 4])
    with pytest.raises(PlanMismatchError, match=r"remove\(\)"):
        apply_plan(model, other, "cpu")
    handle.remove()
    second = apply_plan(model, other, "cpu")
    assert second is not handle
    second.remove()


def test_out_of_turn_forward_resynchronises():
    model = build_tiny_flux()
    expected = run(model, seeds=(0,))
    handle = apply_plan(model, plan_for(model, range(N_BLOCKS), depth=2), "cpu")
    bad = flux_inputs(0)
    bad["encoder_hidden_states"] = bad["encoder_hidden_states"][..., :7]  # fails mid-forward
    with torch.no_grad(), pytest.raises(RuntimeError):
        model(**bad)
    # a partial forward: one streamed block called alone
    block = model.single_transformer_blocks[2]
    with torch.no_grad():
        block(torch.randn(1, 16, 32), torch.randn(1, 8, 32), torch.randn(1, 32))
    assert torch.equal(run(model, seeds=(0,))[0], expected[0])
    assert handle.resyncs >= 1
    handle.remove()


def test_timings_per_forward():
    model = build_tiny_flux()
    handle = apply_plan(model, plan_for(model, [0, 5]), "cpu")
    run(model, seeds=(0,))
    assert handle.timings() == ()
    handle.enable_timing()
    run(model, seeds=(0, 1))
    times = handle.timings()
    assert len(times) == 2 and all(t > 0 for t in times)
    handle.remove()


def test_pipeline_object_applies_to_its_transformer():
    class Holder:  # any object with a .transformer, as diffusers pipelines have
        def __init__(self, transformer):
            self.transformer = transformer

    model = build_tiny_flux()
    handle = apply_plan(Holder(model), plan_for(model, [1]), "cpu")
    assert handle.model is model
    handle.remove()
