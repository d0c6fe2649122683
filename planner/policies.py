"""The simple placement policies peers use, expressed as candidates of our space.

They seed the search (and are evaluated directly, so a tuned plan is never predicted slower
than any of them) and are printed next to the tuned plan so a user sees the difference.
The size-ordered fills (mold, Forge) go block by block, not kind by kind: blocks of one kind
can differ in size (SD3's last block, SD3.5 Medium's dual-attention blocks). Where the blocks
they keep are a prefix of each kind, as with FLUX's equal-sized kinds, the result is the
structured candidate; otherwise it is an explicit set of streamed blocks.
"""

from __future__ import annotations

import enum
from typing import Callable

from planner.space import Candidate, Pattern, Space, explicit_candidate
from runtime.plan import CastMode, HostMemory

PeakFn = Callable[[Candidate], int]


class Policy(str, enum.Enum):
    STREAM_ALL = "stream-all"  # diffusers group offload: every block streamed, depth 1
    PREFIX = "resident-prefix"  # ComfyUI offload nodes, kijai BlockSwap: first N blocks stay
    LARGEST_FIRST = "largest-first"  # mold: fill free VRAM with the largest blocks first
    SMALLEST_FIRST = "smallest-first"  # Forge: fill free VRAM with the smallest blocks first
    SPREAD = "spread"  # as many residents as fit, evenly spread over the depth, depth 2

    @property
    def peer(self) -> str:
        return _PEERS[self]


_PEERS = {
    Policy.STREAM_ALL: "diffusers group offload",
    Policy.PREFIX: "ComfyUI / BlockSwap",
    Policy.LARGEST_FIRST: "mold",
    Policy.SMALLEST_FIRST: "Forge",
    Policy.SPREAD: "spread evenly",
}


def _base(space: Space, depth: int, pattern: Pattern) -> Candidate:
    cast = CastMode.AUTO if CastMode.AUTO in space.casts else CastMode.PRE
    counts = {run.kind: 0 for run in space.kinds}
    return space.candidate(counts, pattern, depth, cast, HostMemory.PINNED, space.cfgs[0])


def _with(space: Space, c: Candidate, counts: dict[str, int]) -> Candidate:
    return space.candidate(counts, c.pattern, c.depth, c.cast, c.host_memory, c.cfg)


def _fill(space: Space, base: Candidate, order: list[str], peak: PeakFn, budget: int) -> Candidate:
    """Keep blocks resident kind by kind in `order`, each as many as fit the budget."""
    counts = dict(base.resident)
    for kind in order:
        limit = len(space.kind(kind).positions)
        while counts[kind] < limit:
            trial = dict(counts, **{kind: counts[kind] + 1})
            if peak(_with(space, base, trial)) > budget:
                break
            counts = trial
    return _with(space, base, counts)


def _fill_by_size(space: Space, base: Candidate, largest: bool, peak: PeakFn, budget: int) -> Candidate:
    """Keep blocks resident one at a time, largest (or smallest) first, ties in execution
    order, each one that still fits the budget; a block that does not fit is passed over."""
    sign = -1 if largest else 1
    order = sorted(range(space.num_blocks), key=lambda i: (sign * space.block_bytes[i], i))
    streamed = [True] * space.num_blocks
    for position in order:
        trial = list(streamed)
        trial[position] = False
        if peak(_as_candidate(space, base, trial)) <= budget:
            streamed = trial
    return _as_candidate(space, base, streamed)


def _as_candidate(space: Space, base: Candidate, streamed: list[bool]) -> Candidate:
    """The structured candidate with these streamed blocks (residents a prefix of each kind),
    else the explicit one."""
    counts = {run.kind: sum(1 for p in run.positions if not streamed[p]) for run in space.kinds}
    structured = _with(space, base, counts)
    if space.streamed_flags(structured) == tuple(streamed):
        return structured
    return explicit_candidate(space, tuple(streamed), base.depth, base.cast, base.host_memory, base.cfg)


def _spread_fill(space: Space, base: Candidate, peak: PeakFn, budget: int) -> Candidate:
    """Add residents one at a time to the kind with the smallest resident fraction."""
    counts = dict(base.resident)
    sizes = {run.kind: len(run.positions) for run in space.kinds}
    open_kinds = set(sizes)
    while open_kinds:
        kind = min(sorted(open_kinds), key=lambda k: counts[k] / sizes[k])
        trial = dict(counts, **{kind: counts[kind] + 1})
        if counts[kind] >= sizes[kind] or peak(_with(space, base, trial)) > budget:
            open_kinds.discard(kind)
            continue
        counts = trial
    return _with(space, base, counts)


def policy_candidate(policy: Policy, space: Space, peak: PeakFn, budget: int) -> Candidate | None:
    """The candidate `policy` picks at `budget`, or None where even its smallest form does not fit."""
    if policy is Policy.STREAM_ALL:
        chosen = _base(space, 1, Pattern.PREFIX)
    elif policy is Policy.PREFIX:
        order = [r.kind for r in sorted(space.kinds, key=lambda r: r.positions[0])]
        chosen = _fill(space, _base(space, 1, Pattern.PREFIX), order, peak, budget)
    elif policy is Policy.LARGEST_FIRST:
        chosen = _fill_by_size(space, _base(space, 1, Pattern.PREFIX), True, peak, budget)
    elif policy is Policy.SMALLEST_FIRST:
        chosen = _fill_by_size(space, _base(space, 1, Pattern.PREFIX), False, peak, budget)
    else:
        chosen = _spread_fill(space, _base(space, 2, Pattern.SPREAD), peak, budget)
    return chosen if peak(chosen) <= budget else None


def policy_candidates(space: Space, peak: PeakFn, budget: int) -> dict[Policy, Candidate | None]:
    return {p: policy_candidate(p, space, peak, budget) for p in Policy}
