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
   the ring streams each block once per forward in a fixed order.

Kinds come from the block's class and the shapes of its tensors: blocks of one class with one
shape share the class name as kind (`FluxTransformerBlock`); where one class comes in several
shapes (a UNet's down blocks, T5's first block with its relative attention bias) each shape is
a kind of its own, numbered in order of appearance (`T5Block`, `T5Block.1`). The planner plans
kinds as runs of interchangeable blocks, so equal kinds must mean equal shapes.

What the engine consumes: `Discovery.adapter()` is an object with what the engine
(`runtime.engine.offload.apply`, `checks.check_plan`) and `runtime.inventory.inventory_of_module`
ask of a family adapter: `name` (`AUTO_FAMILY`, the plan's `model.family`) and
`blocks(model) -> [(name, kind, module)]` in execution order; block names are module paths
(`transformer_blocks.3`), so `model.get_submodule(name)` finds them. Its
`free_non_block_dtypes` lets tensors outside the blocks keep dtypes of their own (a float64
position table beside fp32 blocks); only block tensors are checked against the storage dtype.
So the existing inventory, planner, cost model and engine run discovered blocks unchanged:

    found = record_order(model, lambda: model(**inputs))      # or OrderRecorder around a forward
    inv = inventory_of_module(model, found.adapter(), "my-model", DType.BF16)
    plan = build_plan(inv, streamed_names, workload=..., target=...)
    handle = runtime.engine.offload.apply(model, found.adapter(), plan, device)

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
    """Hooks on every candidate block for one forward: which ran, in which order, how often.

    Use it around a real forward; `result()` is the discovery in execution order. The hooks
    only note the call (no tensor is read or changed), so the forward's output is untouched.
    """

    def __init__(self, model: torch.nn.Module, discovery: Discovery) -> None:
        self.model = model
        self.discovery = discovery
        self.calls: list[str] = []
        self._hooks: list = []

    def __enter__(self) -> "OrderRecorder":
        for block in self.discovery.blocks:
            module = self.model.get_submodule(block.name)

            def note(module, args, name=block.name):
                self.calls.append(name)

            self._hooks.append(module.register_forward_pre_hook(torch.compiler.disable(note)))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def result(self) -> Discovery:
        """The blocks the forward called exactly once, in the order it called them."""
        counts: dict[str, int] = {}
        for name in self.calls:
            counts[name] = counts.get(name, 0) + 1
        kinds = {b.name: b.kind for b in self.discovery.blocks}
        ordered = tuple(FoundBlock(n, kinds[n]) for n in dict.fromkeys(self.calls) if counts[n] == 1)
        kept = {b.name for b in ordered}
        dropped = tuple(b.name for b in self.discovery.blocks if b.name not in kept)
        if not ordered:
            raise UserError(
                f"the forward of {self.discovery.model_class} called none of its "
                f"{len(self.discovery.blocks)} candidate blocks exactly once, so there is no "
                f"block order to stream in: run it without offloading"
            )
        return dataclasses.replace(self.discovery, blocks=ordered, recorded=True, dropped=dropped)


def record_order(model: torch.nn.Module, run) -> Discovery:
    """Find `model`'s blocks and record their order from `run()`, one real forward (for
    callers that drive the forward themselves, e.g. `planner models inspect`)."""
    with OrderRecorder(model, find_blocks(model)) as recorder:
        run()
    return recorder.result()
