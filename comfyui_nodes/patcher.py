"""A plan on a ComfyUI `ModelPatcher`: applied at the first sampling run, kept between runs.

ComfyUI changes a model only through `ModelPatcher`, and it does so before sampling
(`load_models_gpu`: moving weights, writing weight patches such as LoRAs) and when it unloads
or hands the model to another clone (`detach`). So the plan is a `WrappersMP.SAMPLER_SAMPLE`
wrapper on the patcher, around the sampler's denoising loop:

- on entry, ComfyUI has loaded the model and written its patches. If the plan is still applied
  from the last run and nothing of the model changed since (the same tensor objects at the same
  names, on the same devices, at the same addresses, the same weight patches), the run goes on
  with it: the streamed blocks' packs (pinned host memory, the expensive part) are re-used, as
  ComfyUI re-uses the loaded model. Otherwise the kept plan is undone and
  `runtime.apply_plan` applies it afresh (ComfyUI's own pins of offloaded weights are released
  first: the engine pins its packed copies instead);
- on exit the plan stays applied (a run that raised undoes it at once). Between runs the
  streamed weights live in their packs, the resident ones on the load device.
- `CallbacksMP.ON_DETACH` with unpatching (ComfyUI unloads the model) undoes it: every tensor
  goes back where ComfyUI had it, the same tensor objects, no hook left, the packs freed. So
  does the garbage collection of the last patcher that ran it, and any forward of the module
  outside the plan's runs (another clone sampling: ComfyUI detaches the loaded clone without
  unpatching when another clone of the model loads, and also before re-loading the same one).

ComfyUI therefore never sees a ring slot, and a model it unloads holds nothing of the plan.
The patcher that carries the plan is a clone (`clone(disable_dynamic=True)`: DynamicVRAM would
fault weights in on its own); the patcher passed in and its other clones share the module but
not the wrapper. Weight hooks (keyframed "hook" LoRAs) re-patch weights *during* sampling and
are refused. A changed LoRA (another patcher, other patches) makes the whole plan be applied
again, every streamed block re-packed; the engine has no way yet to re-pack only the blocks a
patch touches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
import weakref

KEY = "offload_planner"
# the engine's fix for a plan that does not fit, as the nodes word it
CLI_FIX = "build a plan for this model (planner tune)"
NODE_FIX = "tune a plan for this model with the 'Offload plan: tune' node, or use 'Offload plan: auto'"
log = logging.getLogger("offload_planner")


@dataclasses.dataclass(frozen=True)
class RunReport:
    """What one sampling run did under the plan (the node's log line)."""

    streamed_blocks: int
    blocks: int
    pinned_bytes: int
    pack_s: float  # seconds spent applying the plan (packing); 0.0 when the packs were re-used
    reused: bool
    predicted_step_s: float
    measured_step_s: float | None  # mean over the run's steps

    def line(self) -> str:
        packs = "packs re-used" if self.reused else f"packed in {self.pack_s:.2f} s"
        text = (
            f"offload-planner: {self.streamed_blocks} of {self.blocks} blocks streamed, "
            f"{self.pinned_bytes / 2**30:.2f} GiB pinned, {packs}, predicted "
            f"{self.predicted_step_s:.3f} s/step"
        )
        if self.measured_step_s is not None:
            text += f", measured {self.measured_step_s:.3f} s/step"
        return text


@dataclasses.dataclass(frozen=True)
class FixedPlan:
    """A plan given in advance (file, store), adopted and checked for the module."""

    plan: object  # runtime.plan.Plan

    def apply(self, module, device):
        from runtime import apply_plan

        return apply_plan(module, self.plan, device=device)


@dataclasses.dataclass(frozen=True)
class AutoPlan:
    """A plan measured on the first sampling step and tuned for `vram_bytes` (or the one
    stored for this model, its inputs and this GPU): `runtime.apply_auto`."""

    vram_bytes: int
    host_ram_bytes: int | None
    store_url: str | None

    def apply(self, module, device):
        from runtime import apply_auto

        return apply_auto(module, vram=self.vram_bytes, host_ram=self.host_ram_bytes,
                          device=device, store=self.store_url)


@dataclasses.dataclass
class PlanAttachment:
    """The plan a patcher (and its clones) carries, and the handle kept between runs."""

    source: object  # FixedPlan or AutoPlan: what `apply` puts the module under
    handle: object | None = None  # OffloadHandle or AutoHandle, kept between sampling runs
    applied: int = 0  # times the plan was applied (streamed blocks packed)
    reused: int = 0  # sampling runs that found it applied and unchanged
    removed: int = 0
    last_stats: object | None = None  # OffloadStats of the plan in force at the last run
    last_report: RunReport | None = None
    _kept: tuple | None = None  # the model's state when the last run ended
    _running: bool = False
    _reused_last: bool = False  # the last run found the plan applied and unchanged
    _pack_s: float = 0.0  # seconds the last run spent applying the plan
    _owner: object = None  # weakref to the last patcher that ran the plan
    _guard: object = None  # the module's pre-hook that undoes the plan on a foreign forward
    _finalized: set = dataclasses.field(default_factory=set)  # ids of patchers watched for GC

    @contextlib.contextmanager
    def running(self, patcher):
        """The plan applied to `patcher`'s diffusion model for the block, and kept after."""
        from runtime.errors import UserError

        if patcher.hook_patches:
            raise UserError(
                "the model carries weight hooks (keyframed hook LoRAs), which ComfyUI re-patches "
                "while sampling: load LoRAs with the LoRA loader instead, then apply the plan"
            )
        module = diffusion_model(patcher)
        reused, pack_s = self._ensure_applied(patcher, module)
        self._watch(patcher)
        self._running = True
        try:
            yield self.handle
        except BaseException:
            self.remove()
            raise
        finally:
            self._running = False
        self._kept = model_state(patcher, module)
        self._reused_last, self._pack_s = reused, pack_s

    def _ensure_applied(self, patcher, module) -> tuple[bool, float]:
        if self.handle is not None and self.handle.active and \
                self._kept == model_state(patcher, module):
            self.reused += 1
            return True, 0.0
        self.remove()
        patcher.unpin_all_weights()
        start = time.perf_counter()
        self.handle = self.source.apply(module, patcher.load_device)
        self._guard = module.register_forward_pre_hook(self._foreign_forward, prepend=True)
        self.applied += 1
        return False, time.perf_counter() - start

    @property
    def plan(self):
        """The plan in force (the handle's; an auto plan's is known once it ran)."""
        if self.handle is not None and self.handle.active:
            return self.handle.plan
        return getattr(self.source, "plan", None)

    def _watch(self, patcher) -> None:
        """Undo the plan when the last patcher that ran it is garbage-collected (ComfyUI then
        hands the loaded model to the clone's parent, which knows nothing of the plan)."""
        self._owner = weakref.ref(patcher)
        if id(patcher) not in self._finalized:
            self._finalized.add(id(patcher))
            weakref.finalize(patcher, self._owner_gone, id(patcher))

    def _owner_gone(self, patcher_id: int) -> None:
        self._finalized.discard(patcher_id)
        if not self._running and (self._owner is None or self._owner() is None):
            self.remove()

    def _foreign_forward(self, module, args) -> None:
        """A forward of the module outside this plan's sampling runs (another clone of the
        model sampling, which ComfyUI hands the module to without unpatching it): the plan is
        undone first, so that run sees the model exactly as ComfyUI loaded it."""
        if not self._running:
            self.remove()

    def remove(self) -> None:
        """Undo the plan if it is applied (idempotent)."""
        self._kept = None
        if self._guard is not None:
            self._guard.remove()
            self._guard = None
        if self.handle is None:
            return
        handle, self.handle = self.handle, None
        handle.remove()
        self.removed += 1

    def detached(self, patcher, unpatch_all: bool = True) -> None:
        """ComfyUI detached the model (`ON_DETACH`, after its own unpatching). Without
        unpatching it hands the loaded model on as it is, to this patcher again (every prompt)
        or to another clone: the plan stays, checked at the next run, and undone by the first
        forward that is not one of its runs. Unloading it undoes the plan, then leaves the
        weights where ComfyUI just put them (its offload device), as undoing puts them back
        where they were when the plan came."""
        if sys.is_finalizing() or not unpatch_all:
            return  # exiting: nothing to give back; or handed on as it is
        had = self.handle is not None
        self.remove()
        if had:
            patcher.model.to(patcher.offload_device)

    def sampler_wrapper(self, executor, guider, sigmas, *args, **kwargs):
        import torch

        patcher = guider.model_patcher
        with self.running(patcher) as handle:
            start = time.perf_counter()
            out = executor(guider, sigmas, *args, **kwargs)
            if handle.stats.device.startswith("cuda"):
                torch.cuda.synchronize(patcher.load_device)
            seconds = time.perf_counter() - start
        self._report(handle, seconds / max(len(sigmas) - 1, 1))
        return out

    def _report(self, handle, step_s: float) -> None:
        plan, stats = handle.plan, handle.stats
        self.last_stats = stats
        self.last_report = RunReport(
            streamed_blocks=stats.streamed_blocks,
            blocks=len(plan.blocks),
            pinned_bytes=stats.pinned_bytes,
            pack_s=self._pack_s,
            reused=self._reused_last,
            predicted_step_s=plan.predictions.step_ms / 1000,
            measured_step_s=step_s,
        )
        log.info(self.last_report.line())


def model_state(patcher, module) -> tuple:
    """What must not change for a kept plan to stay valid: which tensor object sits at each
    name, on which device, at which address, in which dtype, and ComfyUI's weight patches."""
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    return (
        patcher.patches_uuid,
        tuple((name, id(t), t.device, t.dtype, t.data_ptr()) for name, t in tensors),
    )


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


def attach(patcher, source):
    """A clone of `patcher` that runs its diffusion model under `source` (a `FixedPlan`
    checked by the caller, or an `AutoPlan`). A plan carried in from an earlier node is
    replaced. Returns `(clone, attachment)`."""
    from comfy.patcher_extension import CallbacksMP, WrappersMP

    clone = patcher.clone(disable_dynamic=True)
    old = attachment_of(clone)
    if old is not None:
        old.remove()
    clone.remove_wrappers_with_key(WrappersMP.SAMPLER_SAMPLE, KEY)
    clone.remove_callbacks_with_key(CallbacksMP.ON_DETACH, KEY)
    attachment = PlanAttachment(source)
    clone.set_attachments(KEY, attachment)
    clone.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, KEY, attachment.sampler_wrapper)
    clone.add_callback_with_key(CallbacksMP.ON_DETACH, KEY, attachment.detached)
    return clone, attachment


def adopted_plan(patcher, plan):
    """`plan` as it runs on `patcher`'s diffusion model, checked before anything is touched.

    `plan` may be tuned for the diffusers family of the model (e.g. `flux-dev`); it is adopted
    for ComfyUI's class by block correspondence and checked against the module's blocks, bytes
    and dtypes here, so a mismatch is reported by the node itself."""
    from runtime.engine.checks import check_plan
    from runtime.errors import PlanMismatchError
    from runtime.families import family_of_module

    module = diffusion_model(patcher)
    adapter = family_of_module(module)
    adopt = getattr(adapter, "adopt_plan", None)
    if adopt is not None:
        plan = adopt(plan)
    try:
        check_plan(module, adapter, plan)
    except PlanMismatchError as e:
        vector = fp8_vector(module)
        if vector is None or plan.model.storage_dtype.value not in ("fp8", "fp8_e5m2"):
            raise PlanMismatchError(str(e).replace(CLI_FIX, NODE_FIX)) from None
        raise PlanMismatchError(
            f"ComfyUI loaded this model with its biases and norms in fp8 too ({vector}), which "
            f"a plan tuned for the released fp8 checkpoint keeps in bf16 ({e}): use the "
            f"'Offload plan: auto' node, or a plan made from this model as loaded"
        ) from None
    return plan


def fp8_vector(module) -> str | None:
    """The name of a 1-D fp8 tensor of `module` (ComfyUI's fp8 weight_dtype), if any."""
    from runtime.engine.casting import is_fp8

    for name, param in list(module.named_parameters()) + list(module.named_buffers()):
        if param.dim() < 2 and is_fp8(param.dtype):
            return name
    return None


def attach_plan(patcher, plan):
    """A clone of `patcher` whose sampling runs put its diffusion model under `plan` (adopted
    and checked first). Returns `(clone, attachment)`."""
    return attach(patcher, FixedPlan(adopted_plan(patcher, plan)))


def attachment_of(patcher) -> PlanAttachment | None:
    """The plan a patcher carries, if any."""
    return patcher.get_attachment(KEY)
