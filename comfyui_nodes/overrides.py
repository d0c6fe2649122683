"""Manual overrides of a plan, for people used to block-swap nodes: which blocks stay on the
GPU, where fp8/quantized weights are cast, how deep the prefetch is. The node shows what was
overridden beside what the plan chose and its predicted cost."""

from __future__ import annotations

import dataclasses
import re

_RANGE = re.compile(r"^(?P<list>[A-Za-z_][\w.]*?)\.(?P<first>\d+)(?:-(?P<last>\d+))?$")


@dataclasses.dataclass(frozen=True)
class Overrides:
    keep_on_gpu: str = ""  # block list ("double_blocks.0-9, single_blocks.3"); "" = as planned
    cast: str = "as planned"  # or a runtime.plan.CastMode value
    prefetch_depth: int = 0  # 0 = as planned

    @property
    def any(self) -> bool:
        from .widgets import PLAN_DEFAULT

        return bool(self.keep_on_gpu.strip()) or self.cast != PLAN_DEFAULT or self.prefetch_depth > 0


def block_names(text: str, plan) -> set[str]:
    """The plan's blocks a list such as 'double_blocks.0-9, single_blocks.3' names."""
    from runtime.errors import UserError

    known = [b.name for b in plan.blocks]
    names: set[str] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        match = _RANGE.match(item)
        if match is None:
            raise UserError(
                f"keep_on_gpu item {item!r} is not a block or range: write e.g. "
                f"{_example(known)}"
            )
        first = int(match["first"])
        last = int(match["last"]) if match["last"] else first
        wanted = {f"{match['list']}.{i}" for i in range(first, last + 1)}
        missing = sorted(wanted - set(known))
        if missing or last < first:
            raise UserError(
                f"keep_on_gpu item {item!r} names blocks this model does not have "
                f"({', '.join(missing[:3]) or 'an empty range'}): its blocks are {_example(known)}"
            )
        names |= wanted
    return names


def _example(known: list[str]) -> str:
    lists: dict[str, int] = {}
    for name in known:
        head, _, index = name.rpartition(".")
        lists[head] = max(lists.get(head, -1), int(index) if index.isdigit() else 0)
    return ", ".join(f"{head}.0-{last}" for head, last in lists.items())


def apply_overrides(plan, overrides: Overrides):
    """The plan with the overrides in force (the plan itself when there are none)."""
    from runtime.errors import UserError
    from runtime.plan import CastMode, Placement

    from .widgets import PLAN_DEFAULT

    if not overrides.any:
        return plan
    blocks = plan.blocks
    if overrides.keep_on_gpu.strip():
        keep = block_names(overrides.keep_on_gpu, plan)
        blocks = tuple(
            dataclasses.replace(
                b, placement=Placement.RESIDENT if b.name in keep else Placement.STREAMED
            )
            for b in blocks
        )
    if overrides.cast != PLAN_DEFAULT:
        try:
            cast = CastMode(overrides.cast)
        except ValueError:
            raise UserError(f"cast {overrides.cast!r} is not a cast mode: choose pre or auto") from None
        blocks = tuple(dataclasses.replace(b, cast=cast) for b in blocks)
    depth = overrides.prefetch_depth or plan.prefetch_depth
    return dataclasses.replace(plan, blocks=blocks, prefetch_depth=depth)


def describe_override(tuned, used) -> str:
    """One line: what runs, beside what the plan chose and its predicted cost."""
    def choice(plan) -> str:
        casts = sorted({b.cast.value for b in plan.blocks}) or ["-"]
        return (f"{len(plan.resident)} of {len(plan.blocks)} blocks kept on the GPU, cast "
                f"{'/'.join(casts)}, prefetch depth {plan.prefetch_depth}")

    return (f"override: {choice(used)}; the plan chose {choice(tuned)}, predicted "
            f"{tuned.predictions.step_ms / 1000:.3f} s/step")
