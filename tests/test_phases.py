"""One heavy component on the device at a time (runtime/phases.py), with real pipelines and
`apply_auto` (CPU): Wan 2.2's two experts, and a prior + decoder cascade (Stable Cascade),
each take the device at their phase, the other one's placement removed first, each planned
from its own first forward; every parameter is back as it was afterwards."""

from __future__ import annotations

import pytest
import torch

from planner.app.auto import apply_auto
from runtime.components import roles_of
from runtime.engine.handle import applied_handle
from runtime.phases import Phases, Whole, execution_device
from tests.anymodel_fixtures import build_stable_cascade, build_wan_two_experts

CPU = torch.device("cpu")


def _run_in_phases(pipe, store: str, **call):
    """`pipe(**call)` with its heavy components in phases; (phases, [(component, placed,
    others placed)] seen at each denoiser forward)."""
    roles = roles_of(pipe)
    seen = []

    def place(name, module):
        if name in roles.encoders:
            return Whole(module, CPU)
        return apply_auto(module, vram=1 << 30, device=CPU, store=store)

    def check(name):  # a pre-hook after the phases': which denoisers hold a placement now
        def hook(module, args):
            others = [n for n in roles.denoisers if n != name]
            seen.append((name, applied_handle(module) is not None,
                         any(applied_handle(getattr(pipe, n)) is not None for n in others)))
        return hook

    phases = Phases(pipe, CPU, place).install(roles.encoders + roles.denoisers)
    hooks = [getattr(pipe, n).register_forward_pre_hook(check(n)) for n in roles.denoisers]
    try:
        with execution_device(pipe, CPU):
            pipe(**call, generator=torch.Generator().manual_seed(0))
    finally:
        phases.remove()
        for h in hooks:
            h.remove()
    return phases, seen


CASES = {
    "wan-2.2-experts": (build_wan_two_experts, ("transformer", "transformer_2"), dict(
        prompt="a cat", num_inference_steps=4, height=64, width=64, num_frames=5,
        guidance_scale=1.0, guidance_scale_2=1.0, max_sequence_length=16, output_type="latent")),
    "stable-cascade": (build_stable_cascade, ("prior_prior", "decoder"), dict(
        prompt="a cat", num_inference_steps=2, prior_num_inference_steps=2, height=64, width=64)),
}


@pytest.mark.parametrize("case", CASES)
def test_denoisers_take_the_device_one_at_a_time(case, tmp_path):
    build, order, call = CASES[case]
    pipe = build()
    denoisers = roles_of(pipe).denoisers
    assert set(denoisers) == set(order)
    before = {name: {k: t.clone() for k, t in getattr(pipe, name).state_dict().items()}
              for name in denoisers}
    phases, seen = _run_in_phases(pipe, f"sqlite:///{tmp_path / 'store.db'}", **call)
    assert [n for n in phases.order if n in denoisers] == list(order)  # as the pipeline ran them
    assert {n for n, _, _ in seen} == set(order)
    assert all(own and not other for _, own, other in seen)  # never two placed at once
    for name in denoisers:
        handle = phases.handles[name]  # placed inside the first forward's pre-hook, apply_auto
        assert handle.forwards == len(phases.forward_ms[name])  # still saw and measured it
        assert handle.profile is not None and handle.profile.model_id.startswith("auto:")
        assert applied_handle(getattr(pipe, name)) is None  # removed: values restored
        after = getattr(pipe, name).state_dict()
        assert all(torch.equal(before[name][k], after[k]) for k in before[name])
