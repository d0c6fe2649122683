"""The streaming schedule: which streamed block is copied into which ring slot, and when.

This is the contract between the runtime engine (which executes it with CUDA streams and
events) and the planner's cost model (which simulates it). Both call this module; neither
restates the rule.

The rule. Blocks run in execution order, step after step. Number the uses of streamed blocks
with one counter `g` that keeps counting across steps (`g = step * m + j` for the j-th of `m`
streamed blocks). Use `g` occupies slot `g % slots`, where `slots = min(depth, m)`.

- Before the first step, copies of uses 0 .. slots-1 are issued.
- Compute of use `g` waits for the copy of use `g` to finish.
- When compute of use `g` has been enqueued, the copy of use `g + slots` is issued on the copy
  stream; it waits until compute of use `g` has finished (the slot is free) and until the
  copy before it on the copy stream has finished (one copy stream, FIFO).
- Uses past the end of a step are the next step's first streamed blocks: the tail of a step
  prefetches the head of the next one.

With `slots == m` every streamed block keeps its own slot, and the rule still re-copies each
one once per step; a planner wanting no copies marks the block resident instead.
"""

from __future__ import annotations

import dataclasses
import functools


@dataclasses.dataclass(frozen=True)
class RingSchedule:
    """The ring for one plan: `streamed` are positions (in execution order) of streamed blocks."""

    num_blocks: int
    streamed: tuple[int, ...]
    depth: int

    def __post_init__(self) -> None:
        assert self.depth >= 1, "depth is validated by the plan loader"
        assert list(self.streamed) == sorted(set(self.streamed)), "streamed positions ascend"
        assert all(0 <= p < self.num_blocks for p in self.streamed)

    @property
    def m(self) -> int:
        return len(self.streamed)

    @property
    def slots(self) -> int:
        return min(self.depth, self.m)

    def slot(self, use: int) -> int:
        return use % self.slots

    def block_of_use(self, use: int) -> int:
        """Execution position of the block a use copies."""
        return self.streamed[use % self.m]

    def initial_copies(self) -> range:
        """Uses copied before the first step starts."""
        return range(self.slots)

    def copy_after(self, use: int) -> int:
        """The use whose copy is issued once compute of `use` is enqueued (same slot)."""
        return use + self.slots

    def use_at(self, step: int, position: int) -> int | None:
        """The use number of execution `position` in `step`, or None for a resident block."""
        j = self._index.get(position)
        return None if j is None else step * self.m + j

    @functools.cached_property
    def _index(self) -> dict[int, int]:
        return {p: j for j, p in enumerate(self.streamed)}


def ring_of(placements: list[bool], depth: int) -> RingSchedule:
    """`placements[i]` is True where block i (execution order) is streamed."""
    streamed = tuple(i for i, s in enumerate(placements) if s)
    return RingSchedule(num_blocks=len(placements), streamed=streamed, depth=depth)


def slot_bytes_by_dtype(streamed_blocks: list[dict[str, int]]) -> dict[str, int]:
    """Size of one ring slot: for each dtype, the largest group any streamed block has.

    A slot is one flat device buffer per dtype; a block's tensors of that dtype are views
    packed back to back from offset 0 (FLUX tensor sizes keep every view aligned).
    """
    out: dict[str, int] = {}
    for groups in streamed_blocks:
        for dtype, num_bytes in groups.items():
            out[dtype] = max(out.get(dtype, 0), num_bytes)
    return out


def ring_bytes(schedule: RingSchedule, streamed_blocks: list[dict[str, int]]) -> int:
    """Device bytes the ring holds: `slots` slots of `slot_bytes_by_dtype`."""
    return schedule.slots * sum(slot_bytes_by_dtype(streamed_blocks).values())
