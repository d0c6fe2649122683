"""Two experts (Wan 2.2 A14B): a tiny WanPipeline with `transformer_2` and a boundary, run
under a plan per expert with residency switched at the boundary, against the plain pipeline;
the switch's bytes in the cost model against the engine's; the phase split against the
pipeline's own choice of expert."""

from __future__ import annotations

import pytest
import torch

from runtime.catalog import get_model
from runtime.inventory import inventory
from runtime.plan import HostMemory, Target, build_plan

BOUNDARY = 0.5
STEPS = 4


def _two_expert_pipeline():
    from diffusers import WanPipeline

    from runtime.families import get_family
    from tests.family_support.wan import build_tiny_pipeline

    one = build_tiny_pipeline(seed=0)
    torch.manual_seed(1)
    second = get_family("wan").build(get_model("tiny-wan").config, device="cpu")
    return WanPipeline(
        tokenizer=one.tokenizer, text_encoder=one.text_encoder, vae=one.vae,
        scheduler=one.scheduler, transformer=one.transformer, transformer_2=second,
        boundary_ratio=BOUNDARY,
    )


def _denoise(pipe, embeds):
    generator = torch.Generator("cpu").manual_seed(0)
    with torch.no_grad():
        return pipe(
            prompt_embeds=embeds, negative_prompt_embeds=embeds * 0.5, guidance_scale=5.0,
            num_frames=5, height=64, width=64, num_inference_steps=STEPS, generator=generator,
            output_type="latent", max_sequence_length=16, return_dict=False,
        )[0]


def _plan(streamed_idx, depth=2):
    inv = inventory("tiny-wan")
    workload = get_model("tiny-wan").workload("64x64", frames=5)
    return build_plan(inv, {inv.blocks[i].name for i in streamed_idx}, workload=workload,
                      target=Target("cpu", 1 << 30), prefetch_depth=depth,
                      host_memory=HostMemory.PAGEABLE)


@pytest.fixture(scope="module")
def pipe_and_embeds():
    pipe = _two_expert_pipeline()
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt("a cat on the mat", do_classifier_free_guidance=False,
                                       max_sequence_length=16, device="cpu")
    return pipe, embeds


def test_each_expert_runs_its_phase(pipe_and_embeds):
    from planner.experts import phase_steps

    pipe, embeds = pipe_and_embeds
    calls = []
    hooks = [getattr(pipe, attr).register_forward_pre_hook(lambda *_, attr=attr: calls.append(attr))
             for attr in ("transformer", "transformer_2")]
    try:
        _denoise(pipe, embeds)
    finally:
        for hook in hooks:
            hook.remove()
    high, low = phase_steps(pipe.scheduler, STEPS, BOUNDARY)
    assert high > 0 and low > 0
    assert calls == ["transformer"] * 2 * high + ["transformer_2"] * 2 * low  # two forwards: CFG


@pytest.mark.parametrize("placements", [((0, 2), (1, 3)), ((0, 1, 2, 3), ()), ((), (0, 1, 2, 3))],
                         ids=["spread", "stream-then-resident", "resident-then-stream"])
def test_switching_experts_is_bitwise_equal_to_the_plain_pipeline(pipe_and_embeds, placements):
    from runtime.engine.experts import apply_experts

    pipe, embeds = pipe_and_embeds
    before = {attr: {k: v.clone() for k, v in getattr(pipe, attr).state_dict().items()}
              for attr in ("transformer", "transformer_2")}
    expected = _denoise(pipe, embeds)
    plans = {"transformer": _plan(placements[0]), "transformer_2": _plan(placements[1], depth=3)}
    handle = apply_experts(pipe, plans, "cpu")
    try:
        assert handle.active == "transformer"
        got = _denoise(pipe, embeds)
        assert handle.active == "transformer_2" and handle.switches == 1
        assert handle.handle.resyncs == 0
    finally:
        handle.remove()
    assert torch.equal(got, expected)
    for attr, state in before.items():
        after = getattr(pipe, attr).state_dict()
        assert all(torch.equal(after[k], v) for k, v in state.items()), attr


def test_the_switch_brings_what_the_cost_model_says(pipe_and_embeds):
    from planner.costmodel import CostModel, Layout
    from planner.experts import switch_of
    from profiler.reference import reference_profile
    from runtime.engine.experts import apply_experts
    from runtime.plan import CastMode

    pipe, _ = pipe_and_embeds
    high_idx, low_idx = (0, 2), (3,)
    plans = {"transformer": _plan(high_idx), "transformer_2": _plan(low_idx)}
    workload = plans["transformer"].workload
    model = CostModel(inventory("tiny-wan"), reference_profile("rtx-4070", "tiny-wan", workload))

    def layout(idx):
        return Layout.uniform([i in idx for i in range(4)], CastMode.PRE, 2, HostMemory.PAGEABLE)

    switch = switch_of(model, layout(high_idx), layout(low_idx))
    handle = apply_experts(pipe, plans, "cpu")
    try:
        out = handle.handle.stats
        handle.activate("transformer_2")
        incoming = handle.handle.stats
    finally:
        handle.remove()
    assert switch.out_bytes == out.resident_bytes + out.non_block_bytes
    assert switch.in_bytes == incoming.resident_bytes + incoming.non_block_bytes
    assert switch.packed_bytes == incoming.pageable_bytes + incoming.pinned_bytes
    assert switch.ms > 0


def test_a14b_phases_and_switch_at_12gb_on_an_rtx_4070():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from planner.budget import parse_size
    from planner.costmodel import CostModel
    from planner.experts import choose_low_noise, phase_steps, predict_experts
    from planner.search import Settings, search
    from planner.space import space_of
    from profiler.reference import reference_profile

    spec = get_model("wan2.2-t2v-a14b")
    workload = spec.workload("832x480", frames=81)
    inv = inventory(spec.id)
    profile = reference_profile("rtx-4070", spec.id, workload)
    budget = parse_size("12GB", "--vram")
    result = search(inv, {workload.cfg: profile}, Settings(budget, trials=30))
    model = CostModel(inv, profile)
    space = space_of(inv, (workload.cfg,))
    high = space.layout(result.best.candidate)
    # the Wan team's A14B sampling: 40 steps at shift 12 (Wan-Video/Wan2.2 wan_t2v_A14B.py)
    steps = phase_steps(FlowMatchEulerDiscreteScheduler(shift=12.0), 40, 0.875)
    assert sum(steps) == 40 and steps[0] > 0 and steps[1] > 0
    low = choose_low_noise(model, high, [space.layout(s.candidate) for s in result.pareto],
                           steps[1], budget)
    pred = predict_experts(model, high, low, steps, budget)
    assert pred.peak_vram_bytes <= budget
    assert pred.switch.in_bytes > inv.non_block_device_bytes  # some blocks stay resident
    assert pred.total_ms == pytest.approx(
        steps[0] * pred.phases[0].prediction.step_ms + steps[1] * pred.phases[1].prediction.step_ms
        + pred.switch.ms
    )
    assert pred.switch.ms < 0.1 * pred.phases[1].prediction.step_ms * steps[1]


def test_an_empty_diffusers_hook_registry_is_not_offloading():
    """A pipeline's cache_context leaves an empty registry; a registry with a hook refuses."""
    from diffusers.hooks import HookRegistry, ModelHook

    from runtime.apply import apply_plan
    from runtime.errors import PlanMismatchError
    from runtime.random_weights import random_model

    model = random_model("tiny-wan")
    with model.cache_context("cond"):
        pass
    assert hasattr(model, "_diffusers_hook")
    apply_plan(model, _plan((0,)), "cpu").remove()
    HookRegistry.check_if_exists_or_initialize(model).register_hook(ModelHook(), "someone-else")
    with pytest.raises(PlanMismatchError, match="offloading hooks"):
        apply_plan(model, _plan((0,)), "cpu")


def test_apply_plan_on_a_two_expert_pipeline_runs_each_expert_in_turn(pipe_and_embeds):
    from planner.experts import phase_steps
    from runtime.apply import apply_plan
    from runtime.engine.experts import ExpertsHandle
    from runtime.errors import PlanMismatchError

    pipe, embeds = pipe_and_embeds
    expected = _denoise(pipe, embeds)
    plan = _plan((1, 3))
    handle = apply_plan(pipe, plan, "cpu")
    try:
        assert isinstance(handle, ExpertsHandle) and apply_plan(pipe, plan, "cpu") is handle
        with pytest.raises(PlanMismatchError, match="already applied"):
            apply_plan(pipe, _plan((0,)), "cpu")
        handle.enable_timing()
        got = _denoise(pipe, embeds)
        assert handle.switches == 1 and handle.stats.streamed_blocks == 2
        high, low = phase_steps(pipe.scheduler, STEPS, BOUNDARY)
        assert len(handle.timings()) == 2 * (high + low) - 1  # the switching one is not timed
    finally:
        handle.remove()
    assert torch.equal(got, expected)
    assert apply_plan(pipe, plan, "cpu") is not handle  # removed: a fresh one applies
    apply_plan(pipe, plan, "cpu").remove()


def test_planner_apply_writes_the_two_expert_clip(pipe_and_embeds, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from planner.cli import app
    from runtime.plan import save_plan

    pipe, _ = pipe_and_embeds
    pipe.save_pretrained(tmp_path / "pipe", safe_serialization=True)
    save_plan(_plan((0, 2)), tmp_path / "plan.json")
    out = tmp_path / "clip.webp"
    result = CliRunner().invoke(app, [
        "apply", str(tmp_path / "plan.json"), "--weights", str(tmp_path / "pipe"),
        "--prompt", "a cat on the mat", "--steps", "4", "--frames", "5", "-o", str(out),
        "--device", "cpu", "--db", f"sqlite:///{tmp_path / 'store.db'}",
    ])
    assert result.exit_code == 0, result.output
    with Image.open(out) as clip:
        assert clip.size == (64, 64) and clip.n_frames == 5
