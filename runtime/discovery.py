"""Generic block discovery: the blocks of any `nn.Module`, found from its module tree and put
in the order a real forward runs them. No family adapter needed.

Two stages, because the order can only be known once the model has run:

1. `find_blocks(model) -> Discovery` (structural, before any forward). Walking the tree from
   the root, a *block list* is an `nn.ModuleList` or `nn.Sequential` with at least two
   children that hold parameters, together holding at least `MIN_SHARE` of the model's
   parameters; its children are the blocks (a child that is itself a list without a forward,
   e.g. `ModuleList([ModuleList([attn, ff]), ...])`, is replaced by its own children). The
   walk stops at a block list, so lists nested inside blocks (a UNet down block's `resnets`)
   are never counted twice. Where no list qualifies, the walk goes down into children that
   hold at least `MIN_SHARE` (transformers' `encoder.block`, `model.layers`). Beside the lists
   found at one level, a shorter sibling ModuleList gives its elements too (Kandinsky 5's text
   refiner blocks), and a sibling module with children and at least as many parameters as
   the smallest block there is one block of its own (a UNet's `mid_block`, as today's UNet
   adapter treats it). A candidate whose tensors are also reached from outside it (tied
   weights) is left out. Everything else is a non-block module. Blocks come out in
   declaration order here, with `recorded=False`.

2. `OrderRecorder(model, discovery)` (a context manager around one real forward) hooks every
   candidate block; `recorder.result()` is the `Discovery` in *execution* order
   (`recorded=True`): a block's position is where the forward first called it. Wan VACE runs
   `vace_blocks` interleaved with (before) `blocks`; a forward that runs a list backwards or
   picks elements by mode is recorded as it ran. A candidate the forward did not call, or
   called more than once, is not a block (it stays with the non-block modules, on the device):
   the ring streams each block once per forward in a fixed order. Where the forward never
   called a candidate but iterated its children itself (`blk.attn(...)`, `blk.ff(...)`), the
   children it called once are the blocks instead: the blocks are the modules it really calls.
   (`ChildCallBinder` streams such a candidate in the stream-all first forward: the engine's
   hooks sit on the block's own call, which never comes.)

Kinds come from the block's class and the shapes of its tensors: blocks of one class with one
shape share the class name as kind (`FluxTransformerBlock`); where one class comes in several
shapes (a UNet's down blocks, T5's first block with its relative attention bias) each shape is
a kind of its own, numbered in order of appearance (`T5Block`, `T5Block.1`). The planner plans
kinds as runs of interchangeable blocks, so equal kinds must mean equal shapes.

What the engine consumes: `Discovery.adapter()` is an object with what the engine
(`runtime.engine.handle.apply`, `checks.check_plan`) and `runtime.inventory.inventory_of_module`
ask of a family adapter: `name` (`AUTO_FAMILY`, the plan's `model.family`) and
`blocks(model) -> [(name, kind, module)]` in execution order; block names are module paths
(`transformer_blocks.3`), so `model.get_submodule(name)` finds them. Its
`free_non_block_dtypes` lets tensors outside the blocks keep dtypes of their own (a float64
position table beside fp32 blocks); only block tensors are checked against the storage dtype.
So the existing inventory, planner, cost model and engine run discovered blocks unchanged:

    found = record_order(model, lambda: model(**inputs))      # or OrderRecorder around a forward
    inv = inventory_of_module(model, found.adapter(), "my-model", DType.BF16)
    plan = build_plan(inv, streamed_names, workload=..., target=...)
    handle = runtime.engine.handle.apply(model, found.adapter(), plan, device)

A family adapter file, where one recognises the model, wins over discovery
(`planner.app.auto.apply_auto` asks `runtime.families.family_of_module` first).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import torch

from runtime.errors import UserError

AUTO_FAMILY = "auto"  # the `model.family` of plans for discovered blocks
MIN_SHARE = 0.05  # of the model's parameters, for a list (or a subtree to look into)
MAX_KIND_CHARS = 64  # the store keeps kinds in 64 characters
_LISTS = (torch.nn.ModuleList, torch.nn.Sequential)


@dataclasses.dataclass(frozen=True)
class FoundBlock:
    name: str  # module path from the model, e.g. "blocks.3", "mid_block"
    kind: str  # class name, numbered per distinct shape ("T5Block.1")


@dataclasses.dataclass(frozen=True)
class Discovery:
    """The blocks of one model: declaration order until a forward was recorded."""

    model_class: str
    blocks: tuple[FoundBlock, ...]
    recorded: bool  # True: `blocks` are in the order a real forward ran them
    dropped: tuple[str, ...] = ()  # candidates the recorded forward did not call exactly once

    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.blocks)

    def adapter(self) -> "DiscoveredAdapter":
        return DiscoveredAdapter(self)


class DiscoveredAdapter:
    """The part of a family adapter the engine and the inventory use, for discovered blocks."""

    name = AUTO_FAMILY
    # tensors outside the blocks keep whatever dtype they have (checked: only block tensors)
    free_non_block_dtypes = True

    def __init__(self, discovery: Discovery) -> None:
        self.discovery = discovery

    def blocks(self, model) -> list[tuple[str, str, torch.nn.Module]]:
        """(name, kind, module) of every block, in the discovery's order."""
        return [(b.name, b.kind, model.get_submodule(b.name)) for b in self.discovery.blocks]

    def recognises(self, module) -> bool:
        return type(module).__name__ == self.discovery.model_class


# ---------------------------------------------------------------- structure


def find_blocks(model: torch.nn.Module) -> Discovery:
    """The candidate blocks of `model` in declaration order (see the module docstring); a
    `UserError` when the model has no list of repeated blocks to stream."""
    total = _params(model)
    found = list(_walk(model, "", total)) if total else []
    names = [name for name, block in found if not _shares_tensors(model, name, block)]
    if not names:
        raise UserError(
            f"{type(model).__name__} has no list of repeated blocks holding {MIN_SHARE:.0%} or more "
            f"of its parameters, so there is nothing to stream block by block: run it without "
            f"offloading, or write a family adapter for it (runtime/families)"
        )
    return Discovery(type(model).__name__, tuple(_with_kinds(model, names)), recorded=False)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _walk(module: torch.nn.Module, prefix: str, total: int) -> Iterator[tuple[str, torch.nn.Module]]:
    """(path, block) of the blocks under `module`, in declaration order."""
    children = [(prefix + name, child) for name, child in module.named_children()]
    lists = {path for path, child in children if _is_block_list(child, total)}
    smallest = min((_params(b) for path, c in children if path in lists for _, b in _elements(c, path)),
                   default=None)
    for path, child in children:
        if path in lists:
            yield from _elements(child, path)
        elif smallest is not None and _params(child) > 0 and isinstance(child, torch.nn.ModuleList):
            yield from _elements(child, path)  # a short list beside the big ones (refiners)
        elif smallest is not None and _params(child) >= smallest > 0 and any(child.children()):
            yield path, child  # a single block beside the lists (a UNet's mid_block)
        elif _params(child) >= MIN_SHARE * total:
            yield from _walk(child, path + ".", total)


def _shares_tensors(model: torch.nn.Module, name: str, block: torch.nn.Module) -> bool:
    """Whether a tensor of `block` is also reached outside it (tied weights): such a block
    cannot be moved on its own."""
    own = {id(t) for t in list(block.parameters()) + list(block.buffers())}
    outside = (
        t for path, t in list(model.named_parameters(remove_duplicate=False))
        + list(model.named_buffers(remove_duplicate=False))
        if not path.startswith(name + ".")
    )
    return any(id(t) in own for t in outside)


def _is_block_list(module: torch.nn.Module, total: int) -> bool:
    if not isinstance(module, _LISTS):
        return False
    holding = [c for c in module.children() if _params(c) > 0]
    return len(holding) >= 2 and _params(module) >= MIN_SHARE * total


def _elements(container: torch.nn.Module, path: str) -> Iterator[tuple[str, torch.nn.Module]]:
    """The blocks of a block list: children with parameters; a child that is a plain
    ModuleList (it has no forward of its own) gives its children instead."""
    for name, child in container.named_children():
        if _params(child) == 0:
            continue
        if isinstance(child, torch.nn.ModuleList):
            yield from _elements(child, f"{path}.{name}")
        else:
            yield f"{path}.{name}", child


def _shape_key(module: torch.nn.Module) -> tuple:
    return tuple(
        (name, tuple(t.shape), str(t.dtype))
        for name, t in list(module.named_parameters()) + list(module.named_buffers())
    )


def _with_kinds(model: torch.nn.Module, names) -> list[FoundBlock]:
    """Kinds by class and shape: one kind per class where its blocks share one shape."""
    shapes: dict[str, list[tuple]] = {}
    keyed = []
    for name in names:
        module = model.get_submodule(name)
        cls = type(module).__name__[: MAX_KIND_CHARS - 4]
        key = _shape_key(module)
        seen = shapes.setdefault(cls, [])
        if key not in seen:
            seen.append(key)
        keyed.append((name, cls, seen.index(key)))
    return [FoundBlock(name, cls if n == 0 else f"{cls}.{n}") for name, cls, n in keyed]


# ---------------------------------------------------------------- order


class OrderRecorder:
    """Hooks on every candidate block and its direct children for one forward: which ran, in
    which order, how often.

    Use it around a real forward; `result()` is the discovery in execution order. The hooks
    only note the call (no tensor is read or changed), so the forward's output is untouched.
    """

    def __init__(self, model: torch.nn.Module, discovery: Discovery) -> None:
        self.model = model
        self.discovery = discovery
        self.calls: list[str] = []  # module paths, candidates and their children, as called
        self._hooks: list = []

    def __enter__(self) -> "OrderRecorder":
        for block in self.discovery.blocks:
            module = self.model.get_submodule(block.name)
            self._note(module, block.name)
            for child_name, child in module.named_children():
                if _params(child) > 0:
                    self._note(child, f"{block.name}.{child_name}")
        return self

    def _note(self, module: torch.nn.Module, name: str) -> None:
        def note(module, args):
            self.calls.append(name)

        self._hooks.append(module.register_forward_pre_hook(torch.compiler.disable(note)))

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def result(self) -> Discovery:
        """The blocks the forward called exactly once, in the order it first called them. A
        candidate the forward never called, whose children it called (it iterated them
        itself), gives those of its children called exactly once instead."""
        counts: dict[str, int] = {}
        for name in self.calls:
            counts[name] = counts.get(name, 0) + 1
        kept = []
        for block in self.discovery.blocks:
            if counts.get(block.name, 0) == 1:
                kept.append(block.name)
            elif block.name not in counts:
                prefix = block.name + "."
                kept.extend(n for n, c in counts.items() if n.startswith(prefix) and c == 1)
        first = {name: i for i, name in reversed(list(enumerate(self.calls)))}
        ordered = sorted(kept, key=first.__getitem__)
        dropped = tuple(b.name for b in self.discovery.blocks if b.name not in counts or counts[b.name] != 1)
        if not ordered:
            raise UserError(
                f"the forward of {self.discovery.model_class} called none of its "
                f"{len(self.discovery.blocks)} candidate blocks exactly once, so there is no "
                f"block order to stream in: run it without offloading"
            )
        return dataclasses.replace(self.discovery, blocks=tuple(_with_kinds(self.model, ordered)),
                                   recorded=True, dropped=dropped)


class ChildCallBinder:
    """For one forward: where the forward runs a candidate block's children without calling
    the block, `bind(name)` the block before its first child runs and `release(name)` it when
    the next candidate starts or `finish()` is called (the forward ended). Blocks the forward
    calls itself are left to the engine's own hooks on them.

    The engine streams a block by hooks on the block's own call; a block never called would
    run its children on weights still in host memory (wrong device on CUDA). The stream-all
    first forward of `apply_auto` runs under this, so such a block is streamed like any other
    (`bind`/`release`: the offload handle's `bind_streamed`/`release_streamed`)."""

    def __init__(self, model: torch.nn.Module, discovery: Discovery, bind, release) -> None:
        self.model = model
        self.discovery = discovery
        self._bind, self._release = bind, release
        self._running: set[str] = set()  # blocks inside their own call
        self._bound: str | None = None
        self._hooks: list = []

    def __enter__(self) -> "ChildCallBinder":
        for block in self.discovery.blocks:
            module = self.model.get_submodule(block.name)
            self._on(module.register_forward_pre_hook(
                lambda m, a, n=block.name: self._enter(n), prepend=True))
            self._on(module.register_forward_hook(
                lambda m, a, o, n=block.name: self._running.discard(n), always_call=True))
            for child in module.children():
                if _params(child) > 0:
                    self._on(child.register_forward_pre_hook(
                        lambda m, a, n=block.name: self._child(n), prepend=True))
        return self

    def _on(self, hook) -> None:
        self._hooks.append(hook)

    def _enter(self, name: str) -> None:
        self.finish()
        self._running.add(name)

    def _child(self, name: str) -> None:
        if name in self._running or self._bound == name:
            return
        self.finish()
        if self._bind(name):
            self._bound = name

    def finish(self) -> None:
        """Release the block bound last, if any."""
        if self._bound is not None:
            bound, self._bound = self._bound, None
            self._release(bound)

    def __exit__(self, *exc) -> None:
        self.finish()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def record_order(model: torch.nn.Module, run) -> Discovery:
    """Find `model`'s blocks and record their order from `run()`, one real forward (for
    callers that drive the forward themselves, e.g. `planner models inspect`)."""
    with OrderRecorder(model, find_blocks(model)) as recorder:
        run()
    return recorder.result()
