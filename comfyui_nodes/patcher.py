"""A plan on a ComfyUI `ModelPatcher`: applied for the length of each sampling run.

ComfyUI changes a model only through `ModelPatcher`, and it does so before sampling
(`load_models_gpu`: moving weights, writing weight patches such as LoRAs) and after it
(`cleanup`, unloading, detaching). Between the two, the sampler only calls the model. So the
plan is a `WrappersMP.SAMPLER_SAMPLE` wrapper on the patcher, around the sampler's denoising
loop:

- on entry, ComfyUI has loaded the model and written its patches; `runtime.apply_plan` puts the
  resident blocks and non-block modules on the patcher's load device and streams the rest
  through the ring (ComfyUI's own pins of offloaded weights are released first: the engine pins
  its packed copies instead);
- on exit, normal or not, `handle.remove()` puts every tensor back exactly where ComfyUI had
  it, the same tensor objects, and removes every hook. A `CallbacksMP.ON_CLEANUP` and an
  `ON_DETACH` callback remove it too, should a run end without the wrapper's exit.

ComfyUI therefore never sees a streamed weight, never moves a ring slot or unloads the ring,
and its memory accounting is its own (the plan's device memory is torch memory it can see as
used while sampling, and none of it remains afterwards). The patcher that carries the plan is
a clone (`clone(disable_dynamic=True)`: DynamicVRAM would fault weights in on its own); the
patcher passed in and its other clones share the module but not the wrapper. Weight hooks
(keyframed "hook" LoRAs) re-patch weights *during* sampling and are refused.
"""

from __future__ import annotations

import contextlib
import dataclasses

KEY = "offload_planner"


@dataclasses.dataclass
class PlanAttachment:
    """The plan a patcher carries and what applying it did."""

    plan: object  # runtime.plan.Plan, adopted for the module's family
    handle: object | None = None  # runtime OffloadHandle while a sampling run is under way
    applied: int = 0  # sampling runs (and measurements) the plan was applied for
    removed: int = 0
    last_stats: object | None = None  # OffloadStats of the last application

    @contextlib.contextmanager
    def running(self, patcher):
        """The plan applied to `patcher`'s diffusion model for the length of the block."""
        from runtime import apply_plan
        from runtime.errors import UserError

        if patcher.hook_patches:
            raise UserError(
                "the model carries weight hooks (keyframed hook LoRAs), which ComfyUI re-patches "
                "while sampling: load LoRAs with the LoRA loader instead, then apply the plan"
            )
        self.remove()
        patcher.unpin_all_weights()
        self.handle = apply_plan(diffusion_model(patcher), self.plan, device=patcher.load_device)
        self.last_stats = self.handle.stats
        self.applied += 1
        try:
            yield self.handle
        finally:
            self.remove()

    def remove(self, *_args) -> None:
        """Undo the plan if it is applied (idempotent; also the cleanup and detach callback)."""
        if self.handle is None:
            return
        handle, self.handle = self.handle, None
        handle.remove()
        self.removed += 1

    def sampler_wrapper(self, executor, guider, *args, **kwargs):
        with self.running(guider.model_patcher):
            return executor(guider, *args, **kwargs)


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


def refuse_fp8_vectors(module) -> None:
    """ComfyUI's fp8 `weight_dtype` stores biases and norm scales in fp8 too; a plan's fp8
    storage keeps them in bf16 (as the released fp8 checkpoints do), so such a module cannot
    match any plan: say so here rather than as a dtype mismatch deep in the check."""
    from runtime.engine.casting import is_fp8
    from runtime.errors import UserError

    for name, param in module.named_parameters():
        if param.dim() < 2 and is_fp8(param.dtype):
            raise UserError(
                f"ComfyUI loaded this model with its biases and norms in fp8 too ({name} is "
                f"{str(param.dtype).removeprefix('torch.')}), which offload plans do not "
                f"describe: load it with weight_dtype 'default' (bf16), then apply the plan"
            )


def attach_plan(patcher, plan):
    """A clone of `patcher` whose sampling runs put its diffusion model under `plan`.

    `plan` may be tuned for the diffusers family of the model (e.g. `flux-dev`); it is adopted
    for ComfyUI's class by block correspondence and checked against the module's blocks and
    bytes here, before anything is touched, so a mismatch is reported by the node itself. A
    plan carried in from an earlier apply node is replaced. Returns `(clone, attachment)`.
    """
    from comfy.patcher_extension import CallbacksMP, WrappersMP

    from runtime.engine.checks import check_plan
    from runtime.families import family_of_module

    module = diffusion_model(patcher)
    refuse_fp8_vectors(module)
    adapter = family_of_module(module)
    adopt = getattr(adapter, "adopt_plan", None)
    if adopt is not None:
        plan = adopt(plan)
    check_plan(module, adapter, plan)
    clone = patcher.clone(disable_dynamic=True)
    for kind in (WrappersMP.SAMPLER_SAMPLE,):
        clone.remove_wrappers_with_key(kind, KEY)
    for kind in (CallbacksMP.ON_CLEANUP, CallbacksMP.ON_DETACH):
        clone.remove_callbacks_with_key(kind, KEY)
    attachment = PlanAttachment(plan)
    clone.set_attachments(KEY, attachment)
    clone.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, KEY, attachment.sampler_wrapper)
    clone.add_callback_with_key(CallbacksMP.ON_CLEANUP, KEY, attachment.remove)
    clone.add_callback_with_key(CallbacksMP.ON_DETACH, KEY, attachment.remove)
    return clone, attachment


def attachment_of(patcher) -> PlanAttachment | None:
    """The plan a patcher carries, if any."""
    return patcher.get_attachment(KEY)
