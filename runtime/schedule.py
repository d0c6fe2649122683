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

Ordering (what makes the rule safe with two streams; `ordering_violations` checks a record of
the engine's stream operations against it): the copy stream waits for the stream that
allocated the slots before it first writes them; a copy into a slot is issued only after the
copy stream waited for the event recorded behind the compute of the slot's previous user
(`use - slots`); a compute waits for the event recorded behind its own copy.
"""

from __future__ import annotations

import dataclasses
import enum
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

    def prefetched(self, step: int) -> range:
        """Uses of `step` whose copies were issued before it began (by the step before, or
        before the first step)."""
        return range(step * self.m, step * self.m + self.slots)

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

    def step_uses(self, step: int) -> tuple[tuple[int, int, int] | None, ...]:
        """Per execution position of `step`: None for a resident block, else (its use, the use
        copied once its compute is enqueued, the position of that use's block): `use_at`,
        `copy_after` and `block_of_use` for a whole step at once (the cost model simulates
        thousands of steps)."""
        cache = self.__dict__.setdefault("_steps", {})
        if step not in cache:
            m, slots, streamed = self.m, self.slots, self.streamed
            base = step * m
            cache[step] = tuple(
                None if j is None else (base + j, base + j + slots, streamed[(j + slots) % m])
                for j in self._index_at
            )
        return cache[step]

    @functools.cached_property
    def _index_at(self) -> tuple[int | None, ...]:
        return tuple(self._index.get(p) for p in range(self.num_blocks))


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


class Op(str, enum.Enum):
    """A stream operation the engine makes for the ring (recorded by `runtime.engine.ring`)."""

    ALLOCATED = "allocated"  # the slots were allocated, on the compute stream
    COPY_WAITS_ALLOCATION = "copy waits allocation"  # the copy stream waits for the compute stream
    COPY_WAITS_COMPUTE = "copy waits compute"  # (slot, use): for the event behind use's compute
    COPY = "copy"  # (slot, use): the copy of use into slot is issued on the copy stream
    COPY_RECORDED = "copy recorded"  # (slot, use): the event behind that copy
    COMPUTE_WAITS_COPY = "compute waits copy"  # (slot, use): the compute stream waits for it
    COMPUTE_RECORDED = "compute recorded"  # (slot, use): the event behind use's compute
    SYNCHRONIZE = "synchronize"  # the host waited for the device: everything before is done


@dataclasses.dataclass(frozen=True)
class StreamOp:
    op: Op
    slot: int | None = None
    use: int | None = None


def ordering_violations(ops, schedule: RingSchedule) -> list[str]:
    """What in `ops` (StreamOps in the order the engine made them) breaks the rule above:
    a copy into a slot before the copy stream waited for the event of the slot's previous
    user (use - slots) or, for a slot's first write, before it waited for the stream that
    allocated the slots; a compute before it waited for its own copy, or on a slot refilled
    since; a use in a slot other than `schedule.slot(use)`. A synchronize settles everything
    issued before it. Empty when the order is right."""
    state = _Order()
    out = []
    for k, op in enumerate(ops):
        problem = state.step(op, schedule)
        if problem:
            out.append(f"op {k} ({op.op.value}, slot {op.slot}, use {op.use}): {problem}")
    return out


class _Order:
    """What the ops so far guarantee, per slot."""

    def __init__(self) -> None:
        self.allocation_waited = False
        self.written: set[int] = set()  # slots written since they were allocated
        self.busy: set[int] = set()  # slots written since the last synchronize
        self.computed: dict[int, int] = {}  # slot -> use whose compute event was recorded last
        self.settled: dict[int, int] = {}  # the same, recorded before the last synchronize
        self.waited: dict[int, int] = {}  # slot -> use whose compute event the copies waited for
        self.filled: dict[int, int] = {}  # slot -> use copied into it last
        self.copied: set[int] = set()  # uses whose copy event was recorded
        self.compute_ready: set[int] = set()  # uses whose compute waited for their copy

    def step(self, op: StreamOp, schedule: RingSchedule) -> str | None:
        handler = getattr(self, "_" + op.op.name.lower())
        return handler(op, schedule)

    def _allocated(self, op, schedule):
        self.allocation_waited, self.written, self.busy = False, set(), set()

    def _copy_waits_allocation(self, op, schedule):
        self.allocation_waited = True

    def _synchronize(self, op, schedule):
        self.allocation_waited = True
        self.settled.update(self.computed)
        self.computed.clear()
        self.busy.clear()
        self.waited.clear()

    def _copy_waits_compute(self, op, schedule):
        self.waited[op.slot] = op.use
        if op.slot not in self.computed and self.settled.get(op.slot) == op.use:
            return None  # an event from before a synchronize: done, waiting costs nothing
        if self.computed.get(op.slot) != op.use:
            return f"waits for use {op.use}, but the slot's last compute event is use {self.computed.get(op.slot)}"

    def _copy(self, op, schedule):
        previous = op.use - schedule.slots
        problem = None
        if op.slot != schedule.slot(op.use):
            problem = f"the schedule puts use {op.use} in slot {schedule.slot(op.use)}"
        elif op.slot not in self.written and not self.allocation_waited:
            problem = "first copy into the slot before the copy stream waited for the allocation"
        elif op.slot in self.busy and self.computed.get(op.slot) != previous:
            problem = f"copy before the compute of the slot's previous user (use {previous}) was recorded"
        elif op.slot in self.busy and self.waited.get(op.slot) != previous:
            problem = f"copy before the wait on the event of the slot's previous user (use {previous})"
        self.written.add(op.slot)
        self.busy.add(op.slot)
        self.filled[op.slot] = op.use
        return problem

    def _copy_recorded(self, op, schedule):
        self.copied.add(op.use)
        if self.filled.get(op.slot) != op.use:
            return "records a copy that was not the slot's last"

    def _compute_waits_copy(self, op, schedule):
        self.compute_ready.add(op.use)
        if op.use not in self.copied:
            return "waits for a copy event never recorded"
        if self.filled.get(op.slot) != op.use:
            return f"the slot was refilled with use {self.filled.get(op.slot)} before this compute"

    def _compute_recorded(self, op, schedule):
        self.computed[op.slot] = op.use
        self.waited.pop(op.slot, None)
        if op.use not in self.compute_ready:
            return "compute ran without waiting for its copy"
