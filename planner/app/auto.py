"""`apply_auto`: block offloading for any module, planned from its own first forward.

    handle = apply_auto(model_or_pipeline, vram="8GB", host_ram=None, device=None, store=None)
    model(...)        # first forward: every block streamed at depth 1, measured
    model(...)        # from here on: the plan tuned from that measurement
    handle.stats      # OffloadStats of the plan in force
    handle.remove()   # the model exactly as it was

How it runs:
1. The blocks: a family adapter that recognises the module wins (its exact names and kinds);
   otherwise `runtime.discovery.find_blocks` finds them from the module tree. Every block is
   streamed at depth 1 (a plan that fits whenever anything does: the non-block modules, one
   slot and the activations), applied by the engine at once, so `stats` holds from the start.
2. The first forward's inputs give the store key (`planner.app.auto_keys`: class, config and
   tensor-layout hash, input shapes; the GPU by the machine's fingerprint). A plan stored for
   this key and budget is applied before that forward runs (the run starts tuned); a stored
   profile is tuned from at once. Otherwise the forward runs under step 1's plan while
   `runtime.discovery.OrderRecorder` records the blocks' execution order (discovered blocks
   only; `ChildCallBinder` streams a block whose children the forward runs without calling
   the block) and `profiler.first_step.FirstStepMeter` measures each block's compute,
   activation and the workspace (on CUDA it resets the allocator's peak statistics as it
   goes); the copy bandwidth is measured on the model's own packs right after.
3. The search (`planner.search`, `planner.host_ram.fitting`: the same planner as `planner
   tune`) tunes a plan from that profile within the VRAM budget (on CPU: the budget itself,
   counted against measured activations and workspace, no margin) and the host RAM limit;
   profile and plan are stored; the handle switches to the plan between the first forward
   and the second. Where no plan fits better, the stream-everything plan stays.
Every forward, the first included, computes exactly what the plain model does: the engine
only moves weights.

The handle (`AutoHandle`), for callers (the CLI, the ComfyUI auto node):
- `plan` (runtime.plan.Plan) and `stats` (OffloadStats): the plan in force, stream-all until
  the first forward has ended, then the tuned one; `tuned` says which;
- `source`: "stream-all", "measured", "stored plan" or "stored profile"; `note`: why the
  stream-everything plan stayed (the search's sentence), else "";
- `profile` (profiler.types.Profile, with its store id), `model_id` (the `auto:` key, known
  from the first forward on), `discovery` (runtime.discovery.Discovery, None where a family
  adapter was used), `adapter`, `forwards`, `resyncs` (blocks run out of the recorded order);
- `remove()`: every tensor's device, dtype and values and every hook as before; idempotent.
Limits: only the first forward is measured; later forwards with other input shapes run under
the plan in force (a new `apply_auto` measures them under their own key). A pipeline's first
denoiser (transformer or unet) is what is offloaded.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch

from planner.app.auto_keys import AUTO_WORKLOAD, auto_model_id, storage_of
from planner.app.auto_store import save_plan, save_profile, stored_auto
from planner.app.placing import plan_of
from planner.app.request import ProfileSource
from planner.budget import format_size, parse_size
from planner.host_peak import HostParts
from planner.host_ram import fitting, rank_ms, streamed_bytes
from planner.search import Evaluator, Settings, search
from profiler.first_step import FirstStepMeter, measure_pack_bandwidth, profile_of
from runtime.apply import denoiser_of
from runtime.engine.device import device_name, resolve_device
from runtime.discovery import ChildCallBinder, Discovery, FoundBlock, OrderRecorder, find_blocks
from runtime.engine import handle as engine
from runtime.engine.host_memory import available_host_bytes
from runtime.errors import PlanMismatchError, UserError
from runtime.families import family_of_module
from runtime.inventory import inventory_of_module, stored_as_is
from runtime.plan import CastMode, HostMemory, Target, stream_all_plan

AUTO_TRIALS = 48  # the analytic frontier pass and the peers do most of the work


@dataclasses.dataclass(frozen=True)
class AutoConfig:
    budget_bytes: int
    host_ram_bytes: int | None
    device: torch.device
    store_url: str | None
    trials: int = AUTO_TRIALS


def apply_auto(model_or_pipeline, vram="8GB", host_ram=None, device=None, store=None) -> "AutoHandle":
    """Offload `model_or_pipeline` (any `nn.Module`, or a diffusers pipeline's transformer or
    unet) within `vram` (a size: "8GB", or bytes), planned from its own first forward; see the
    module docstring. `host_ram` caps the host RAM the streamed blocks' packs hold (default:
    what this machine has available now),
    `device` is the compute device (default CUDA when there is one, else CPU), `store` a
    database URL (default: the user's store). Returns an `AutoHandle`; `remove()` undoes it."""
    model = denoiser_of(model_or_pipeline)
    if engine.applied_handle(model) is not None:
        raise UserError(
            f"a plan is already applied to this {type(model).__name__}: call remove() on its "
            f"handle first, then apply_auto"
        )
    config = AutoConfig(
        budget_bytes=vram if isinstance(vram, int) else parse_size(str(vram), "vram"),
        host_ram_bytes=None if host_ram is None else
        host_ram if isinstance(host_ram, int) else parse_size(str(host_ram), "host_ram"),
        device=resolve_device(device),
        store_url=store,
    )
    return AutoHandle(model, config)


def _adapter_of(model):
    """(family adapter, discovery): the family's adapter where one recognises `model`, else
    the structural discovery's (discovery is None for a family)."""
    try:
        return family_of_module(model), None
    except UserError:
        discovery = find_blocks(model)
        return discovery.adapter(), discovery


class AutoHandle:
    """What `apply_auto` returns: the plan in force (`plan`, `stats`), how it came about
    (`profile`, `tuned`, `source`), and `remove()`."""

    def __init__(self, model: torch.nn.Module, config: AutoConfig) -> None:
        self.model = model
        self.config = config
        self.adapter, self.discovery = _adapter_of(model)
        self.storage = storage_of(model, self.adapter)
        self.model_id: str | None = None  # known at the first forward (its inputs are in it)
        self.profile = None  # profiler.types.Profile the plan was tuned from
        self.tuned = False  # True once the tuned plan is in force
        self.source = "stream-all"  # then "measured", "stored plan" or "stored profile"
        self.note = ""  # why the stream-everything plan stayed, where it did
        self.forwards = 0
        self._inner = engine.apply(model, self.adapter, self._stream_all_plan(), config.device)
        self._measuring = None  # (meter, recorder, binder) during the first forward
        self._hooks = [
            model.register_forward_pre_hook(torch.compiler.disable(self._before), prepend=True,
                                            with_kwargs=True),
            model.register_forward_hook(torch.compiler.disable(self._after), always_call=True),
        ]

    # ------------------------------------------------------------ what callers read

    @property
    def active(self) -> bool:
        return self._inner is not None

    @property
    def plan(self):
        self._require_active()
        return self._inner.plan

    @property
    def stats(self):
        """`OffloadStats` of the plan in force."""
        self._require_active()
        return self._inner.stats

    @property
    def resyncs(self) -> int:
        """How often the ring restarted because blocks ran out of the recorded order."""
        self._require_active()
        return self._inner.resyncs

    def remove(self) -> None:
        """Undo everything: weights, devices, dtypes and hooks as before. Idempotent."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._stop_measuring()
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.remove()

    def __repr__(self) -> str:
        state = ("tuned" if self.tuned else "first step") if self.active else "removed"
        return f"<AutoHandle {type(self.model).__name__} on {self.config.device} ({state})>"

    # ------------------------------------------------------------ the first forward

    def _before(self, module, args, kwargs) -> None:
        self.forwards += 1
        if self.forwards != 1 or self._inner is None:
            return
        self.model_id = auto_model_id(self.model, args, kwargs)
        if self._start_stored():
            return
        parts = [FirstStepMeter(self.model, self.adapter.blocks(self.model), self.config.device)]
        if self.discovery is not None:  # discovered blocks: record their order as they run
            parts += [OrderRecorder(self.model, self.discovery), ChildCallBinder(
                self.model, self.discovery, self._inner.bind_streamed, self._inner.release_streamed)]
        for part in parts:
            part.__enter__()
        self._measuring = tuple(parts)

    def _after(self, module, args, output) -> None:
        if self._measuring is None:
            return
        meter, *found = self._measuring
        self._stop_measuring()
        if output is None:  # the forward raised (torch passes no output): measure the next one
            self.forwards = 0
            return
        if found:
            self.discovery = found[0].result()
            self.adapter = self.discovery.adapter()
        inventory = self._inventory()
        self.profile = self._measured_profile(inventory, meter.readings())
        self._tune_and_switch(inventory, "measured")

    def _stop_measuring(self) -> None:
        if self._measuring is not None:
            for part in reversed(self._measuring):
                part.__exit__(None, None, None)
        self._measuring = None

    def _measured_profile(self, inventory, readings):
        pack, slot = self._inner.queued_copy()  # the first forward streamed every block
        bandwidth = measure_pack_bandwidth(pack, slot, self.config.device)
        return profile_of(self.model_id, AUTO_WORKLOAD, self.storage, inventory, readings,
                          bandwidth, self._inner.stats.device_weight_bytes, self.config.device)

    # ------------------------------------------------------------ plans

    def _inventory(self):
        return inventory_of_module(self.model, self.adapter, self.model_id or "auto:first-step",
                                   self.storage)

    def _stream_all_plan(self):
        inventory = self._inventory()
        return stream_all_plan(
            inventory, AUTO_WORKLOAD, Target(device_name(self.config.device), self.config.budget_bytes),
            # fp8 counted as stored (ComfyUI's fp8 weight_dtype) stays fp8 in its packs, so the
            # inventory taken under this plan after the first forward still sees it as stored
            cast=CastMode.AUTO if stored_as_is(self.model, self.storage) else CastMode.PRE,
        )

    def _tune_and_switch(self, inventory, source: str) -> None:
        if self.profile.id is None:
            self.profile = save_profile(self.config.store_url, self.profile)
        try:
            plan = tune_auto(inventory, self.profile, self.config)
        except UserError as e:  # nothing fits better than streaming everything at depth 1
            self.note = str(e)
            warnings.warn(f"apply_auto keeps every block streamed: {e}", stacklevel=2)
            return
        save_plan(self.config.store_url, plan)
        self._switch(plan, self.adapter)
        self.source = source

    def _switch(self, plan, adapter) -> None:
        """Undo the plan in force and apply `plan`; if that is refused, the old one again."""
        old, old_adapter = self._inner, self.adapter
        old.remove()
        self._inner = None
        try:
            self._inner = engine.apply(self.model, adapter, plan, self.config.device)
        except BaseException:
            self._inner = engine.apply(self.model, old_adapter, old.plan, self.config.device)
            raise
        self.adapter = adapter
        self.tuned = True

    def _start_stored(self) -> bool:
        """Apply this key's stored plan (or tune from its stored profile); False if none, or
        if what is stored no longer fits the model (then it is measured again)."""
        found = stored_auto(self.config.store_url, self.model_id, self.storage, self.config.device,
                            self.config.budget_bytes)
        if found is None:
            return False
        profile, plan = found
        discovery, adapter = self.discovery, self.adapter
        if discovery is not None:  # the stored profile holds the recorded order
            discovery = Discovery(type(self.model).__name__,
                                  tuple(FoundBlock(b.name, b.kind) for b in profile.blocks),
                                  recorded=True)
            adapter = discovery.adapter()
        try:
            if plan is None:
                inventory = inventory_of_module(self.model, adapter, self.model_id, self.storage)
                self.profile, self.adapter, self.discovery = profile, adapter, discovery
                self._tune_and_switch(inventory, "stored profile")
                return True
            self._switch(plan, adapter)
        except (PlanMismatchError, AttributeError):  # AttributeError: a block name not there
            return False
        self.profile, self.discovery, self.source = profile, discovery, "stored plan"
        return True

    def _require_active(self) -> None:
        if self._inner is None:
            raise RuntimeError("this auto handle was removed; call apply_auto again")


def tune_auto(inventory, profile, config: AutoConfig):
    """The plan the search finds for `inventory` from `profile` within the VRAM budget and
    the host RAM (as `planner tune` does, without a store or an engine). The host RAM counts
    the streamed packs alone (`config.host_ram_bytes`, else what this machine has available
    now, which the running process is already out of), and keeps every block in RAM: the
    weights are in memory, there is no file for a disk tier to read. On a CPU the ring's
    copies are memcpys on the compute thread: only pageable plans, whose copies the cost model
    serialises with compute, describe that. Ranked as `planner tune` ranks (`rank_ms`: casting
    fp8 or quantized blocks on the host must buy `HEAVY_MARGIN`); ties go to fewer streamed bytes."""
    profiles = {profile.workload.cfg: profile}
    result = search(inventory, profiles, Settings(config.budget_bytes, trials=config.trials))
    limit = config.host_ram_bytes if config.host_ram_bytes is not None else available_host_bytes()
    parts = HostParts(0, 0, 0, baseline_source="apply_auto: the packs alone")
    ev = Evaluator(inventory, profiles)
    fits = [t for t in fitting(ev, result, limit, parts) if not t.on_disk]
    if config.device.type == "cpu":
        fits = [t for t in fits if t.scored.candidate.host_memory is HostMemory.PAGEABLE] or fits
    if not fits:
        raise UserError(
            f"no plan's streamed blocks fit a host RAM of {format_size(limit)}: give a larger "
            f"host_ram, or a larger vram so that more blocks stay on the device"
        )
    best = min(fits, key=lambda t: (rank_ms(ev, t), streamed_bytes(ev, t.scored.candidate),
                                    t.scored.peak_vram_bytes, t.scored.candidate.describe()))
    source = ProfileSource(profiles, profile.machine.gpu_name, profile.id, False)
    plan, _ = plan_of(inventory, source, best.scored, config.budget_bytes)
    return plan

