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
from tests.anymodel_fixtures import build_wan_two_experts

BOUNDARY = 0.5
STEPS = 4


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
    pipe = build_wan_two_experts(boundary_ratio=BOUNDARY)
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
    from planner.experts import choose_experts, phase_steps, predict_experts
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
    options = [high] + [space.layout(s.candidate) for s in result.pareto
                        if s.peak_vram_bytes <= result.room_bytes]
    h, low = choose_experts(model, options, steps)
    pred = predict_experts(model, options[h], options[low], steps, budget)
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


def _experts_plan(first=(0, 2), second=(1, 2, 3)):
    """A tiny-wan-a14b plan that places its experts apart (the second at depth 3, pageable)."""
    from runtime.plan import with_experts

    def one(idx, depth):
        inv = inventory("tiny-wan-a14b")
        return build_plan(inv, {inv.blocks[i].name for i in idx},
                          workload=get_model("tiny-wan-a14b").workload(), target=Target("cpu", 1 << 30),
                          prefetch_depth=depth, host_memory=HostMemory.PAGEABLE)

    return with_experts(one(first, 2), {"transformer_2": one(second, 3)})


def test_a_plan_with_a_placement_per_expert_applies_each_in_its_phase(pipe_and_embeds):
    from runtime.apply import apply_plan

    pipe, embeds = pipe_and_embeds
    expected = _denoise(pipe, embeds)
    plan = _experts_plan()
    handle = apply_plan(pipe, plan, "cpu")
    try:
        assert handle.stats.streamed_blocks == 2 and handle.handle.plan.prefetch_depth == 2
        assert apply_plan(pipe, plan, "cpu") is handle
        got = _denoise(pipe, embeds)
        assert handle.active == "transformer_2" and handle.switches == 1 and len(handle.switch_ms) == 1
        assert handle.stats.streamed_blocks == 3 and handle.handle.plan.prefetch_depth == 3
        assert handle.handle.plan == plan.for_expert("transformer_2")
    finally:
        handle.remove()
    assert torch.equal(got, expected)


def test_a_plan_placing_a_second_expert_is_refused_by_a_pipeline_without_one():
    from runtime.apply import apply_plan
    from runtime.errors import PlanMismatchError
    from tests.family_support.wan import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    state = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    with pytest.raises(PlanMismatchError, match="places expert 'transformer_2' but this WanPipeline has no transformer_2"):
        apply_plan(pipe, _experts_plan(), "cpu")
    assert all(torch.equal(pipe.transformer.state_dict()[k], v) for k, v in state.items())
    apply_plan(pipe.transformer, _experts_plan(), "cpu").remove()  # one module: the first expert's


def test_the_tune_time_step_split_is_diffusers_own():
    """Tune splits the steps without importing diffusers; the split must be the scheduler's."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from planner.experts import flow_match_timesteps

    for shift in (1.0, 3.0, 12.0):
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
        for steps in (1, 2, 4, 7, 20, 40, 50):
            scheduler.set_timesteps(steps, device="cpu")
            assert flow_match_timesteps(steps, shift) == [float(t) for t in scheduler.timesteps]


def test_tune_places_the_a14b_experts_apart_where_the_switch_pays(tmp_path):
    """At 12 GB on an RTX 4070 both phases are compute-bound, so the switch decides: the
    high-noise expert keeps fewer blocks resident (less to move out), the low-noise one more
    (less to pack). The plan carries both; explain and the store read them back."""
    import json

    from typer.testing import CliRunner

    from planner.budget import parse_size
    from planner.cli import app
    from runtime.plan import load_plan

    db = f"sqlite:///{tmp_path / 'store.db'}"
    out = tmp_path / "plan.json"
    runner = CliRunner()
    result = runner.invoke(app, ["tune", "--model", "wan2.2-t2v-a14b", "--resolution", "832x480",
                                 "--frames", "81", "--vram", "12GB", "--gpu", "rtx-4070", "-o", str(out),
                                 "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    experts = json.loads(result.output)["experts"]
    plan = load_plan(out)
    assert [e.attr for e in plan.experts] == ["transformer_2"]
    first, second = (plan.for_expert(a) for a in ("transformer", "transformer_2"))
    assert [p["streamed_blocks"] for p in experts["phases"]] == [len(first.streamed), len(second.streamed)]
    assert len(first.streamed) != len(second.streamed) and not experts["same_placement"]
    assert experts["peak_vram_bytes"] <= parse_size("12GB", "--vram")
    assert max(first.predictions.peak_vram_bytes, second.predictions.peak_vram_bytes) == experts["peak_vram_bytes"]
    # placing them apart is never slower than the first expert's placement for both
    from planner.costmodel import CostModel
    from planner.experts import predict_experts, split_steps
    from planner.explain import layout_of
    from profiler.reference import reference_profile

    inv = inventory("wan2.2-t2v-a14b")
    model = CostModel(inv, reference_profile("rtx-4070", "wan2.2-t2v-a14b", plan.workload))
    spec = get_model("wan2.2-t2v-a14b")
    alike = predict_experts(model, layout_of(first, inv), layout_of(first, inv), split_steps(spec.experts, 40))
    assert experts["total_ms"] < alike.total_ms
    explained = runner.invoke(app, ["explain", str(out), "--gpu", "rtx-4070"])
    assert explained.exit_code == 0, explained.output
    assert f"transformer_2 15 steps" in explained.output
    assert f"({len(second.streamed)} streamed)" in explained.output and "one placement for both" not in explained.output
    shown = runner.invoke(app, ["plans", "show", "1", "--db", db])
    assert shown.exit_code == 0, shown.output
    assert f"transformer_2: {len(second.streamed)}/40 streamed, depth {second.prefetch_depth}" in shown.output
    assert "transformer_2" in shown.output.splitlines()[-42]  # the block table's header


def test_planner_apply_times_each_expert_and_the_switch(pipe_and_embeds, tmp_path):
    import json

    from PIL import Image, ImageChops
    from typer.testing import CliRunner

    from planner.cli import app
    from runtime.plan import save_plan

    pipe, _ = pipe_and_embeds
    pipe.save_pretrained(tmp_path / "pipe", safe_serialization=True)
    save_plan(_experts_plan(), tmp_path / "plan.json")

    def run(name, *extra):
        result = CliRunner().invoke(app, [
            "apply", str(tmp_path / "plan.json"), "--weights", str(tmp_path / "pipe"),
            "--prompt", "a cat on the mat", "--steps", "4", "-o", str(tmp_path / name),
            "--device", "cpu", "--db", f"sqlite:///{tmp_path / 'store.db'}", "--json", *extra,
        ])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout[result.stdout.index("{"):])

    from planner.experts import phase_steps, split_steps

    data = run("a.webp")
    assert set(data["expert_step_ms"]) == {"transformer", "transformer_2"}
    assert len(data["switch_ms"]) == 1 and data["switch_ms"][0] > 0
    high, low = phase_steps(pipe.scheduler, STEPS, BOUNDARY)
    assert (high, low) == split_steps(get_model("tiny-wan-a14b").experts, STEPS)  # tune's split
    # the step that switches experts is not a whole timed step
    assert [len(v) for v in data["expert_step_ms"].values()] == [high, low - 1]
    run("b.webp", "--guidance-2", "1.5")
    with Image.open(tmp_path / "a.webp") as a, Image.open(tmp_path / "b.webp") as b:
        a.seek(a.n_frames - 1)
        b.seek(b.n_frames - 1)
        assert ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getbbox() is not None
    bad = CliRunner().invoke(app, [
        "apply", str(tmp_path / "plan.json"), "--weights", str(tmp_path / "pipe"), "--prompt", "x",
        "--guidance-2", "nan", "-o", str(tmp_path / "c.webp"), "--device", "cpu",
    ])
    assert bad.exit_code != 0 and "--guidance-2 nan is not a guidance scale" in bad.output
    assert not (tmp_path / "c.webp").exists()


def test_guidance_2_is_refused_for_a_model_with_one_transformer(tmp_path):
    from typer.testing import CliRunner

    from planner.cli import app
    from runtime.plan import save_plan

    save_plan(_plan((0,)), tmp_path / "plan.json")  # tiny-wan: one transformer
    (tmp_path / "pipe").mkdir()
    result = CliRunner().invoke(app, [
        "apply", str(tmp_path / "plan.json"), "--weights", str(tmp_path / "pipe"), "--prompt", "x",
        "--guidance-2", "3", "-o", str(tmp_path / "c.webp"), "--device", "cpu",
    ])
    assert result.exit_code != 0 and "one transformer: drop --guidance-2" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "c.webp").exists()


def test_planner_apply_loads_the_second_expert_from_its_own_file(pipe_and_embeds, tmp_path):
    """--transformer-2 FILE (original Wan names, as the released low-noise files) replaces the
    folder's transformer_2: the same weights give the same clip, other weights another."""
    from PIL import Image, ImageChops
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from planner.cli import app
    from runtime.plan import save_plan
    from tests.family_support.wan import to_original

    pipe, _ = pipe_and_embeds
    pipe.save_pretrained(tmp_path / "pipe", safe_serialization=True)
    save_plan(_experts_plan(), tmp_path / "plan.json")
    state = {k: v.contiguous() for k, v in pipe.transformer_2.state_dict().items()}
    save_file(to_original(state), tmp_path / "low_noise.safetensors")
    save_file(to_original({k: v * 1.01 for k, v in state.items()}), tmp_path / "other.safetensors")

    def run(name, *extra):
        result = CliRunner().invoke(app, [
            "apply", str(tmp_path / "plan.json"), "--weights", str(tmp_path / "pipe"),
            "--prompt", "a cat on the mat", "--steps", "4", "-o", str(tmp_path / name),
            "--device", "cpu", "--db", f"sqlite:///{tmp_path / 'store.db'}", *extra,
        ])
        assert result.exit_code == 0, result.output
        image = Image.open(tmp_path / name)
        image.seek(image.n_frames - 1)
        return image.convert("RGB")

    folder = run("folder.webp")
    same = run("same.webp", "--transformer-2", str(tmp_path / "low_noise.safetensors"))
    other = run("other.webp", "--transformer-2", str(tmp_path / "other.safetensors"))
    assert ImageChops.difference(folder, same).getbbox() is None
    assert ImageChops.difference(folder, other).getbbox() is not None
    missing = CliRunner().invoke(app, [
        "apply", str(tmp_path / "plan.json"), "--weights", str(tmp_path / "pipe"), "--prompt", "x",
        "--transformer-2", str(tmp_path / "none.safetensors"), "-o", str(tmp_path / "x.webp"),
        "--device", "cpu",
    ])
    assert missing.exit_code != 0 and "--transformer-2" in missing.output and "cannot be read" in missing.output


def test_a_failing_switch_leaves_both_experts_as_they_were(pipe_and_embeds):
    # the incoming expert's plan is refused at the switch (it stores fp8; this expert holds
    # fp32): the outgoing expert is back under its plan, the incoming one untouched, the error
    # raised, and a later switch back works
    from runtime.dtypes import DType
    from runtime.engine.experts import apply_experts
    from runtime.errors import PlanMismatchError
    from runtime.families import get_family
    from tests.engine_probes import block_homes, moved

    pipe, embeds = pipe_and_embeds
    wan = get_family("wan")
    first, second = pipe.transformer, pipe.transformer_2
    inv = inventory("tiny-wan", DType.FP8)
    bad = build_plan(inv, {inv.blocks[0].name}, workload=get_model("tiny-wan").workload("64x64", frames=5),
                     target=Target("cpu", 1 << 30), prefetch_depth=2, host_memory=HostMemory.PAGEABLE)
    untouched = {k: v.clone() for k, v in second.state_dict().items()}
    hooks = (dict(second._forward_pre_hooks), dict(second._forward_hooks))
    good = _plan((1, 3))
    handle = apply_experts(pipe, {"transformer": good, "transformer_2": bad}, "cpu")
    try:
        applied = handle.handle
        before = {k: v.clone() for k, v in first.state_dict().items()}
        with pytest.raises(PlanMismatchError, match="fp8"):
            handle.activate("transformer_2")
        assert handle.active == "transformer" and handle.switches == 0
        assert handle.handle is not applied and handle.handle.plan == good
        assert handle.stats.streamed_blocks == 2
        assert all(torch.equal(v, before[k]) for k, v in first.state_dict().items())
        homes = block_homes(first, wan)  # and it runs under its plan again
        inputs = wan.model_inputs(first, get_model("tiny-wan").workload("64x64", frames=5), "cpu", torch.float32)
        with torch.no_grad():
            first(**inputs)
        assert moved(homes) == [] and handle.active == "transformer" and handle.resyncs == 0
        assert all(torch.equal(v, untouched[k]) for k, v in second.state_dict().items())
        assert len(second._forward_pre_hooks) == len(hooks[0]) + 1  # the switch's own
        assert dict(second._forward_hooks) == hooks[1]
    finally:
        handle.remove()
    assert dict(second._forward_pre_hooks) == hooks[0] and not first._forward_pre_hooks
