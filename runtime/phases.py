"""A pipeline's heavy components (text encoders, denoisers: a prior and a decoder, two experts)
take the device one at a time, each within the budget at its phase.

`Phases(pipe, device, place)` hooks every heavy component; the first forward of a component
that is not on the device ends the active one's phase (its placement is removed: weights back
to the host, device memory released) and places the incoming one (`place(name, module)`
returns a handle with `remove()`: an `apply_auto` handle, or `Whole`). The pipeline drives
the order (encode, denoise, a cascade's second stage, Wan 2.2's expert switch); nothing is
assumed about it. Each component's forward times and each phase's device peak are recorded.

`execution_device(pipe, device)` makes the pipeline create its latents and inputs on `device`
while its components sit on the host until their phase (diffusers asks `_execution_device`,
as it does under its own CPU offloading).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

from runtime.engine.device import synchronize


class Whole:
    """A component on the device whole for its phase; `remove()` puts it back on the host."""

    def __init__(self, module, device) -> None:
        self.module = module
        self.home = {id(t): t.device for t in _tensors(module)}
        module.to(device)

    def remove(self) -> None:
        for t in _tensors(self.module):
            home = self.home.get(id(t))
            if home is not None and t.device != home:
                t.data = t.data.to(home)


def _tensors(module) -> list:
    return list(module.parameters()) + list(module.buffers())


class Phases:
    """Hooks on the heavy components of a pipeline; see the module docstring."""

    def __init__(self, pipe, device, place: Callable[[str, object], object],
                 describe: Callable[[object], object] = lambda handle: None) -> None:
        self.pipe = pipe
        self.device = device
        self.place = place
        self.describe = describe  # what to keep of a placement before it is removed
        self.described: dict[str, object] = {}  # the last phase of each component, described
        self.active: str | None = None
        self.handle = None
        self.order: list[str] = []  # the phases as they ran (a component again: a new phase)
        self.forward_ms: dict[str, list[float]] = {}
        self.peak_bytes: dict[str, int] = {}  # each component's phase peak (CUDA only)
        self.handles: dict[str, object] = {}  # the last placement of each component
        self._hooks: list = []
        self._start = 0.0

    def install(self, names) -> "Phases":
        for name in names:
            module = getattr(self.pipe, name)
            self._hooks.append(module.register_forward_pre_hook(
                lambda m, args, kwargs, name=name: self._before(name, m, args, kwargs),
                with_kwargs=True))
            self._hooks.append(module.register_forward_hook(
                lambda m, args, out, name=name: self._after(name)))
        return self

    def _before(self, name: str, module, args, kwargs):
        changed = None
        if name != self.active:
            known = set(module._forward_pre_hooks)
            self._switch(name)
            changed = _run_new_pre_hooks(module, known, args, kwargs)
        synchronize(self.device)
        self._start = time.perf_counter()
        return changed

    def _after(self, name: str) -> None:
        synchronize(self.device)
        self.forward_ms.setdefault(name, []).append((time.perf_counter() - self._start) * 1000.0)

    def _switch(self, name: str) -> None:
        self._close()
        self.handle = self.place(name, getattr(self.pipe, name))
        self.handles[name] = self.handle
        self.active = name
        self.order.append(name)

    def _close(self) -> None:
        """End the active phase: its peak recorded, its placement removed."""
        import torch

        if self.active is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = int(torch.cuda.max_memory_allocated(self.device))
            self.peak_bytes[self.active] = max(peak, self.peak_bytes.get(self.active, 0))
        self.described[self.active] = self.describe(self.handle)
        self.handle.remove()
        self.handle, self.active = None, None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def remove(self) -> None:
        """End the active phase and take the hooks off: every component as it was."""
        try:
            self._close()
        finally:
            for hook in self._hooks:
                hook.remove()
            self._hooks = []


def _run_new_pre_hooks(module, known: set, args, kwargs):
    """Run the forward pre-hooks a placement installed on `module` during this call's own
    pre-hooks (PyTorch iterates a snapshot taken before them, so it would skip those until
    the next call: `apply_auto` measures from its pre-hook at the first forward). Each hook
    runs as `Module._call_impl` would run it; the (args, kwargs) they leave are returned."""
    for hook_id, hook in list(module._forward_pre_hooks.items()):
        if hook_id in known:
            continue
        if hook_id in module._forward_pre_hooks_with_kwargs:
            result = hook(module, args, kwargs)
            if result is not None:
                args, kwargs = result
        else:
            result = hook(module, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
    return args, kwargs


@contextlib.contextmanager
def execution_device(pipe, device) -> Iterator[None]:
    """Within the block, `pipe` (and the pipelines it holds: a cascade's prior and decoder
    pipelines) report `device` as their execution device; the classes are restored after."""
    from diffusers import DiffusionPipeline

    pipes = [pipe] + [v for v in vars(pipe).values() if isinstance(v, DiffusionPipeline)]
    classes = [p.__class__ for p in pipes]
    try:
        for p, cls in zip(pipes, classes):
            p.__class__ = type(cls.__name__, (cls,), {
                "_execution_device": property(lambda self: device),
                "__module__": cls.__module__,
            })
        yield
    finally:
        for p, cls in zip(pipes, classes):
            p.__class__ = cls
