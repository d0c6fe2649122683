"""One heavy component on the device at a time (runtime/phases.py), with real pipelines and
`apply_auto` (CPU): Wan 2.2's two experts each take the device at their phase, the other
one's placement removed first; every parameter is back as it was afterwards."""

from __future__ import annotations

import torch

from planner.app.auto import apply_auto
from runtime.components import roles_of
from runtime.engine import offload
from runtime.phases import Phases, Whole, execution_device
from tests.anymodel_fixtures import build_wan_two_experts

CPU = torch.device("cpu")


def test_two_experts_take_the_device_one_at_a_time(tmp_path):
    pipe = build_wan_two_experts()
    roles = roles_of(pipe)
    assert roles.denoisers == ("transformer", "transformer_2")
    before = {name: {k: t.clone() for k, t in getattr(pipe, name).state_dict().items()}
              for name in roles.denoisers}
    store = f"sqlite:///{tmp_path / 'store.db'}"
    seen = []

    def place(name, module):
        if name in roles.encoders:
            return Whole(module, CPU)
        return apply_auto(module, vram=1 << 30, device=CPU, store=store)

    def check(name):  # a pre-hook after the phases': which experts hold a placement now
        def hook(module, args):
            other = "transformer_2" if name == "transformer" else "transformer"
            seen.append((name, offload.applied_handle(getattr(pipe, name)) is not None,
                         offload.applied_handle(getattr(pipe, other)) is not None))
        return hook

    phases = Phases(pipe, CPU, place).install(roles.encoders + roles.denoisers)
    hooks = [getattr(pipe, n).register_forward_pre_hook(check(n)) for n in roles.denoisers]
    try:
        with execution_device(pipe, CPU):
            pipe(prompt="a cat", num_inference_steps=4, height=64, width=64, num_frames=5,
                 guidance_scale=1.0, guidance_scale_2=1.0, max_sequence_length=16,
                 generator=torch.Generator().manual_seed(0), output_type="latent")
    finally:
        phases.remove()
        for h in hooks:
            h.remove()
    assert phases.order == ["text_encoder", "transformer", "transformer_2"]
    assert {n for n, _, _ in seen} == {"transformer", "transformer_2"}
    assert all(own and not other for _, own, other in seen)  # never both placed
    assert len(phases.forward_ms["transformer"]) + len(phases.forward_ms["transformer_2"]) == 4
    for name in roles.denoisers:  # placed inside the first forward's pre-hook, apply_auto still
        handle = phases.handles[name]  # saw (and measured) that forward
        assert handle.forwards == len(phases.forward_ms[name]) and handle.profile is not None
    for name in roles.denoisers:  # removed: every tensor its own values, no placement left
        assert offload.applied_handle(getattr(pipe, name)) is None
        after = getattr(pipe, name).state_dict()
        assert all(torch.equal(before[name][k], after[k]) for k in before[name])
