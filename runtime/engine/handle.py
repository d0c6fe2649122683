"""What `apply_plan` returns: stats of what was allocated, timings, and `remove()`."""

from __future__ import annotations

import time
import weakref

import torch

from runtime.engine import adapters
from runtime.engine.offload import apply_state
from runtime.engine.stats import OffloadStats
from runtime.errors import PlanMismatchError
from runtime.families import family_of_module


class ForwardTimer:
    """Wall time of each forward of the model, without synchronising inside the step."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.enabled = False
        self.records: list[tuple] = []
        self._start = None

    def before(self, module, args):
        if not self.enabled:
            return
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record(torch.cuda.current_stream(self.device))
        else:
            self._start = time.perf_counter()

    def after(self, module, args, output):
        if not self.enabled or self._start is None:
            return
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record(torch.cuda.current_stream(self.device))
        else:
            end = time.perf_counter()
        self.records.append((self._start, end))
        self._start = None

    def milliseconds(self) -> tuple[float, ...]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return tuple(start.elapsed_time(end) for start, end in self.records)
        return tuple((end - start) * 1000.0 for start, end in self.records)


class OffloadHandle:
    """A plan applied to a model. `remove()` puts the model back exactly as it was.

    Its own hooks on the model's forward time each forward and, first of all, notice when the
    model's adapters changed since the plan was applied (a LoRA loaded, deleted, fused or
    unfused): then the plan is undone and applied again, so the adapters are placed with their
    blocks and no slot holds weights from before a fuse."""

    def __init__(self, model, adapter, plan, device: torch.device, state) -> None:
        self.model = model
        self.plan = plan
        self.device = device
        self._adapter = adapter  # the family adapter
        self._state = state  # runtime.engine.offload.AppliedState
        self._timer = ForwardTimer(device)
        self.reapplied = 0  # how often adapter changes made the plan be applied again
        self._hooks = [
            model.register_forward_pre_hook(torch.compiler.disable(self._follow_adapters),
                                            prepend=True),
            model.register_forward_pre_hook(torch.compiler.disable(self._timer.before)),
            model.register_forward_hook(torch.compiler.disable(self._timer.after),
                                        always_call=True),
        ]

    @property
    def active(self) -> bool:
        return self._state is not None

    @property
    def stats(self) -> OffloadStats:
        self._require_active()
        return self._state.stats(self.device)

    @property
    def resyncs(self) -> int:
        """How often the ring restarted because blocks ran out of turn."""
        self._require_active()
        return self._state.ring.resyncs if self._state.ring is not None else 0

    def ring_buffers(self) -> list[torch.Tensor]:
        """The ring's flat device buffers (for inspection and memory checks)."""
        self._require_active()
        ring = self._state.ring
        return [] if ring is None else [t for slot in ring.slot_buffers for t in slot.values()]

    def queued_copy(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        """(host pack, ring slot) of the next streamed block the ring has copied ahead, between
        forwards: copying that pack into that slot again rewrites the same bytes, so a copy
        can be timed on the model's own buffers without disturbing the ring (waits for the
        ring's copies first). None where nothing streams."""
        self._require_active()
        ring = self._state.ring
        if ring is None:
            return None
        ring.sync.synchronize()
        use = ring.next_use
        j = use % ring.schedule.m
        return ring.host_buffers[j], ring.slot_targets[j][ring.schedule.slot(use)]

    def bind_streamed(self, name: str) -> bool:
        """Point streamed block `name` at its ring slot, as the ring's hook on the block does
        when the block is called, for a forward that runs the block's children without calling
        the block (`release_streamed` when they are done). False where `name` is not streamed."""
        self._require_active()
        j = self._streamed_position(name)
        if j is None:
            return False
        self._state.ring.before(j)
        return True

    def release_streamed(self, name: str) -> None:
        """End `bind_streamed(name)`: the slot is freed behind the children's compute and the
        block points home again."""
        self._require_active()
        j = self._streamed_position(name)
        if j is not None:
            self._state.ring.after(j)

    def _streamed_position(self, name: str) -> int | None:
        if self._state.ring is None:
            return None
        names = [b.name for b in self.plan.streamed]  # plan blocks are in execution order
        return names.index(name) if name in names else None

    def enable_timing(self) -> None:
        self._timer.enabled = True

    def disable_timing(self) -> None:
        self._timer.enabled = False

    def reset_timing(self) -> None:
        self._timer.records = []

    def timings(self) -> tuple[float, ...]:
        """Milliseconds of each forward since timing was enabled (synchronises on CUDA)."""
        return self._timer.milliseconds()

    def remove(self) -> None:
        """Undo the plan: weights, devices, dtypes and hooks as before. Idempotent."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        state, self._state = self._state, None
        if state is not None:
            state.undo()
        forget(self.model, self)

    def release(self) -> None:
        """Drop the plan and the model's weights without restoring them: for a caller that
        throws the model away (`runtime.generate`, before the decode), so that the host never
        holds the whole transformer again. The model is unusable afterwards. Idempotent."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        state, self._state = self._state, None
        if state is not None:
            state.drop(self.model)
        forget(self.model, self)

    def _follow_adapters(self, module, args) -> None:
        if self._state is None or adapters.signature(self.model) == self._state.adapter_signature:
            return
        state, self._state = self._state, None
        state.undo()
        adapters.settle_with_base_layers(self.model)
        try:
            self._state = apply_state(self.model, self._adapter, self.plan, self.device)
        except BaseException:
            self.remove()  # nothing is applied any more: the handle says so
            raise
        self.reapplied += 1

    def _require_active(self) -> None:
        if self._state is None:
            raise RuntimeError("this offload handle was removed; apply the plan again")

    def __repr__(self) -> str:
        status = "active" if self.active else "removed"
        return f"<OffloadHandle {self.plan.model.id} on {self.device} ({status})>"


_APPLIED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def applied_handle(model) -> OffloadHandle | None:
    return _APPLIED.get(model)


def forget(model, handle) -> None:
    if _APPLIED.get(model) is handle:
        del _APPLIED[model]


def apply(model, adapter, plan, device: torch.device) -> OffloadHandle:
    """Check, then apply; a failure half-way undoes what was done and re-raises."""
    handle = OffloadHandle(model, adapter, plan, device, apply_state(model, adapter, plan, device))
    _APPLIED[model] = handle
    return handle


def refuse_other_plan(model, plan, device) -> OffloadHandle | None:
    """The handle when the same plan is applied again; refuse a different one."""
    handle = applied_handle(model)
    if handle is None:
        return None
    if handle.plan == plan and handle.device == device:
        return handle
    raise PlanMismatchError(
        f"another plan ({handle.plan.model.id} on {handle.device}) is already applied to this "
        f"model: call remove() on its handle first, then apply the new plan"
    )


def apply_module(model, plan, device: torch.device) -> OffloadHandle:
    """Apply a one-transformer `plan` to `model` on (resolved) `device`: the same plan applied
    again returns its handle, another plan is refused until that handle is removed."""
    existing = refuse_other_plan(model, plan, device)
    if existing is not None:
        return existing
    return apply(model, family_of_module(model), plan, device)
