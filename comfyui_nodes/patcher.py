"""A plan on a ComfyUI `ModelPatcher`, through the patcher's own injection point.

ComfyUI changes a model only inside `ModelPatcher`: loading (`load`, `partially_load`), adding
weight patches (LoRA), reading the state dict, unloading (`partially_unload`, `detach`). Each of
these first *ejects* the patcher's injections and injects them again when it is done
(`use_ejected`, `patch_model`, `detach`). So the plan is an injection:

- inject (after ComfyUI has loaded the model and written its weight patches, LoRA included):
  `runtime.apply_plan` on the diffusion model, on the patcher's load device. ComfyUI's own
  pinning of offloaded weights is undone first (our packs are pinned by the engine instead).
- eject (before ComfyUI touches the model in any way): `handle.remove()`, which puts every
  tensor back where ComfyUI had it, the same tensor objects, and removes every hook.

ComfyUI therefore never sees a streamed weight, never moves a ring slot, and never unloads the
ring behind our back: when it unloads the model it ejects first. The patcher that carries the
plan is a clone (`clone(disable_dynamic=True)`: DynamicVRAM would fault weights in on its own),
so the patcher passed in, and every other clone of the shared module, stay as they were.
"""

from __future__ import annotations

import dataclasses

KEY = "offload_planner"


@dataclasses.dataclass
class PlanInjection:
    """The plan and what it did; the patcher's injections hold one per planned patcher."""

    plan: object  # runtime.plan.Plan, already adopted for the module's family
    handle: object | None = None  # runtime OffloadHandle while injected
    injected: int = 0  # how often the plan was applied (a new ComfyUI load each time)
    ejected: int = 0
    last_stats: object | None = None  # OffloadStats of the last application

    def inject(self, patcher) -> None:
        from runtime import apply_plan

        if self.handle is not None and self.handle.active:
            return
        patcher.unpin_all_weights()
        self.handle = apply_plan(diffusion_model(patcher), self.plan, device=patcher.load_device)
        self.last_stats = self.handle.stats
        self.injected += 1

    def eject(self, patcher) -> None:
        if self.handle is None:
            return
        handle, self.handle = self.handle, None
        handle.remove()
        self.ejected += 1


def diffusion_model(patcher):
    """The transformer module of a ComfyUI model (`BaseModel.diffusion_model`)."""
    from runtime.errors import UserError

    module = getattr(patcher.model, "diffusion_model", None)
    if module is None:
        raise UserError(
            f"the MODEL input ({type(patcher.model).__name__}) has no diffusion model: connect "
            f"the MODEL output of a checkpoint or diffusion model loader"
        )
    return module


def attach_plan(patcher, plan):
    """A clone of `patcher` that runs its diffusion model under `plan`.

    `plan` may be tuned for the diffusers family of the model (e.g. `flux-dev`); it is adopted
    for ComfyUI's class by block correspondence and checked against the module's blocks and
    bytes here, before anything is touched, so a mismatch is reported by the node itself.
    Returns `(clone, injection)`.
    """
    from runtime.engine.checks import check_plan
    from runtime.families import family_of_module

    module = diffusion_model(patcher)
    adapter = family_of_module(module)
    adopt = getattr(adapter, "adopt_plan", None)
    if adopt is not None:
        plan = adopt(plan)
    check_plan(module, adapter, plan)
    clone = patcher.clone(disable_dynamic=True)
    clone.remove_injections(KEY)  # a plan carried in from an earlier apply node is replaced
    injection = PlanInjection(plan)
    clone.set_injections(KEY, [_injection_of(injection)])
    return clone, injection


def injection_of(patcher) -> PlanInjection | None:
    """The plan injection a patcher carries, if any."""
    for entry in patcher.get_injections(KEY) or []:
        return getattr(entry, "plan_injection", None)
    return None


def _injection_of(injection: PlanInjection):
    from comfy.patcher_extension import PatcherInjection

    entry = PatcherInjection(inject=injection.inject, eject=injection.eject)
    entry.plan_injection = injection
    return entry
