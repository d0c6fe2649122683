"""Two experts under one budget (Wan 2.2 A14B's `transformer` and `transformer_2`).

`apply_experts(pipe, plans, device)` applies the first expert's plan at once and leaves the
other expert as it is. A forward pre-hook on each expert switches residency when the pipeline
calls the other one (WanPipeline does so once, at `boundary_ratio`): the active expert's plan
is removed first (its resident blocks and non-block modules go back to the host, the device
memory is released), then the incoming expert's plan is applied. The device never holds both
experts' weights, so the switch stays within the budget either plan was made for. The cost
model of this switch is `planner.experts.switch_of`.

A switch that fails (the incoming plan refused, the device or host memory short) re-applies the
outgoing expert's plan before the error is raised: both experts are as they were before it.

`remove()` removes the active plan and the hooks: both experts are as they were.
"""

from __future__ import annotations

import weakref
from typing import Mapping

from runtime.engine.device import resolve_device
from runtime.engine.handle import apply_module
from runtime.errors import PlanMismatchError, UserError

_APPLIED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # first expert -> handle


class ExpertsHandle:
    """Plans applied to a pipeline's experts, one active at a time."""

    def __init__(self, pipe, plans: Mapping[str, object], device) -> None:
        self.pipe = pipe
        self.plans = dict(plans)
        self.device = device
        self.active: str | None = None
        self.switches = 0
        self._handle = None
        self._hooks: list = []
        self._timing = False
        self._done_ms: list[tuple[str, float]] = []  # (expert, ms) of forwards before the last switch
        self._resyncs = 0
        self.switch_ms: list[float] = []  # wall time of each switch: remove, then apply

    @property
    def plan(self):
        """The first expert's plan (what `apply_plan` was given)."""
        return next(iter(self.plans.values()))

    @property
    def stats(self):
        """The active expert's `OffloadStats`: what the device holds now."""
        return self.handle.stats

    @property
    def resyncs(self) -> int:
        return self._resyncs + self.handle.resyncs

    @property
    def handle(self):
        """The active expert's `OffloadHandle`."""
        if self._handle is None:
            raise RuntimeError("these experts' plans were removed; apply them again")
        return self._handle

    def activate(self, expert: str) -> None:
        """Make `expert` the one on the device (no-op when it already is)."""
        import time

        import torch

        if expert == self.active:
            return
        outgoing = self.active if self._handle is not None else None
        if outgoing is not None:
            if self.device.type == "cuda":  # the outgoing expert's last kernels are not the switch's
                torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            self._done_ms.extend((outgoing, ms) for ms in self._handle.timings())
            self._resyncs += self._handle.resyncs
            self._handle.remove()
            self._handle = None
        try:
            self._handle = self._apply(expert)
        except BaseException:
            self._restore(outgoing)  # the incoming expert's apply undid itself
            raise
        self.active = expert
        if outgoing is not None:
            self.switches += 1
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.switch_ms.append((time.perf_counter() - start) * 1000.0)
        if self._timing:
            self._handle.enable_timing()

    def _apply(self, expert: str):
        return apply_module(getattr(self.pipe, expert), self.plans[expert], self.device)

    def _restore(self, outgoing: str | None) -> None:
        """After a failed switch: the outgoing expert back under its plan, as before the
        switch; where even that fails, no expert is active (and the first error is raised)."""
        self.active = None
        if outgoing is None:
            return
        try:
            self._handle = self._apply(outgoing)
        except BaseException:
            return
        self.active = outgoing
        if self._timing:
            self._handle.enable_timing()

    def enable_timing(self) -> None:
        self._timing = True
        self.handle.enable_timing()

    def timings(self) -> tuple[float, ...]:
        """Milliseconds of each timed forward, both experts, in order. The first forward after
        a switch is not timed: the incoming plan's timer is installed inside that forward."""
        return tuple(ms for _, ms in self.timed())

    def timed(self) -> tuple[tuple[str, float], ...]:
        """(expert, milliseconds) of each timed forward, in order (see `timings`)."""
        return (*self._done_ms, *((self.active, ms) for ms in self.handle.timings()))

    def remove(self) -> None:
        """Undo: the active plan removed, the hooks gone; both experts as before. Idempotent."""
        self.remove_hooks_only()
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.active = None


    def release(self) -> None:
        """Drop the active plan and every expert's weights (`OffloadHandle.release`)."""
        from runtime.engine.offload import drop_tensors

        self.remove_hooks_only()
        if self._handle is not None:
            self._handle.release()
            self._handle = None
        for attr in self.plans:
            expert = getattr(self.pipe, attr, None)
            if expert is not None:
                drop_tensors(expert)
        self.active = None

    def remove_hooks_only(self) -> None:
        first = getattr(self.pipe, next(iter(self.plans)))
        if _APPLIED.get(first) is self:
            del _APPLIED[first]
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def apply_experts(pipe, plans: Mapping[str, object], device=None) -> ExpertsHandle:
    """Apply `plans` ({pipeline attribute: plan}, e.g. transformer and transformer_2) so that
    one expert at a time is on `device`; the first attribute's expert is activated now."""
    import torch

    if len(plans) < 2:
        raise UserError("apply_experts takes a plan per expert: give two or more, or use apply_plan")
    for attr in plans:
        if not isinstance(getattr(pipe, attr, None), torch.nn.Module):
            raise UserError(
                f"{type(pipe).__name__} has no expert {attr!r}: give plans for its transformers "
                f"(e.g. transformer and transformer_2)"
            )
    handle = ExpertsHandle(pipe, plans, resolve_device(device))
    first = getattr(pipe, next(iter(plans)))
    if first in _APPLIED:
        raise PlanMismatchError(
            "other plans are already applied to these experts: call remove() on their handle "
            "first, then apply the new plans"
        )
    try:
        handle.activate(next(iter(plans)))
        for attr in plans:
            module = getattr(pipe, attr)
            hook = module.register_forward_pre_hook(
                torch.compiler.disable(lambda *_, attr=attr: handle.activate(attr)), prepend=True
            )
            handle._hooks.append(hook)
    except BaseException:
        handle.remove()
        raise
    _APPLIED[first] = handle
    return handle


def applied_experts(pipe, plans: Mapping[str, object], device) -> ExpertsHandle | None:
    """The handle when `plans` are applied again to the same experts on `device`; None when
    none is applied (different plans are refused by `apply_experts`)."""
    handle = _APPLIED.get(getattr(pipe, next(iter(plans)), None))
    if handle is None:
        return None
    if handle.device == device and handle.plans == dict(plans):
        return handle
    raise PlanMismatchError(
        f"another plan ({handle.plan.model.id} on {handle.device}) is already applied to these "
        f"experts: call remove() on its handle first, then apply the new plan"
    )
