"""The real floor: no placement of the model at a VRAM budget can step faster than this.

Not the bound of one plan but of every plan the engine could run at the budget: any blocks
resident, each block's cast chosen on its own (fp8 storage: a resident block pre-cast to bf16
takes twice the VRAM and casts nothing per step, or stays fp8 and casts every step; a streamed
block crosses the bus as bf16, or as fp8 and casts on the GPU), any depth, the best bandwidth.

    floor = min over placements of forwards x max(C, T)
    C = non-block + every block's compute + the casts the placement makes
    T = bytes the placement streams / the best measured bandwidth

Resident counts are enumerated per group of identical blocks (FLUX: 20 x 39 of them). For a
given set of resident counts the cast choices are relaxed to fractions, which can only lower
the minimum, so the floor stays a floor: the VRAM left after the resident blocks (in their
smallest form) and one ring slot (the largest streamed block in its smallest form: a plan that
streams anything holds at least that) pre-casts resident blocks, most cast time saved per byte
first; then streamed blocks switch from bf16 to fp8 transfers, most bus time saved per ms of
cast first, until transfer and compute meet. For bf16 storage there are no casts and this is
max(compute, the fewest bytes that must stream / bandwidth), with whole blocks.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

ENUMERATION_LIMIT = 50_000  # resident-count combinations; above it the counts are relaxed too


@dataclasses.dataclass(frozen=True)
class Group:
    """Identical blocks: how many, their device bytes cast on the host (`pre`) and kept in
    the storage dtype (`auto`), and the on-device cast one forward of one block costs."""

    count: int
    pre_bytes: int
    auto_bytes: int
    cast_ms: float


def groups_of(pre: tuple[int, ...], auto: tuple[int, ...], cast_ms: tuple[float, ...]) -> tuple[Group, ...]:
    counts: dict[tuple, int] = {}
    for key in zip(pre, auto, cast_ms):
        counts[key] = counts.get(key, 0) + 1
    return tuple(Group(n, p, a, k) for (p, a, k), n in sorted(counts.items(), reverse=True))


def floor_ms(groups: tuple[Group, ...], compute_ms: float, room_bytes: int, gbps: float, forwards: int) -> float:
    """The floor of one step. `compute_ms` is one forward without casts (non-block included),
    `room_bytes` the VRAM left for block weights and the ring (budget less everything else)."""
    if room_bytes < 0:
        return math.inf
    counts = [range(g.count + 1) for g in groups]
    if math.prod(g.count + 1 for g in groups) > ENUMERATION_LIMIT:
        return forwards * _relaxed(groups, compute_ms, room_bytes, gbps)
    best = math.inf
    for resident in itertools.product(*counts):
        best = min(best, _value(groups, resident, compute_ms, room_bytes, gbps))
    return forwards * best


def _value(groups, resident, compute_ms: float, room: int, gbps: float) -> float:
    streamed = [g.count - r for g, r in zip(groups, resident)]
    slot = max((g.auto_bytes for g, s in zip(groups, streamed) if s), default=0)
    left = room - slot - sum(r * g.auto_bytes for g, r in zip(groups, resident))
    if left < 0:
        return math.inf
    compute = compute_ms + sum(r * g.cast_ms for g, r in zip(groups, resident))
    compute -= _precast_savings(groups, resident, left)
    transfer = sum(s * g.pre_bytes for g, s in zip(groups, streamed)) / (gbps * 1e6)
    return _meet(groups, streamed, compute, transfer, gbps)


def _precast_savings(groups, resident, left: float) -> float:
    """Cast time saved by keeping resident blocks pre-cast, fractional knapsack over `left`."""
    options = [(g.cast_ms / (g.pre_bytes - g.auto_bytes), r, g) for g, r in zip(groups, resident)
               if r and g.pre_bytes > g.auto_bytes and g.cast_ms > 0]
    saved = 0.0
    for _, r, g in sorted(options, key=lambda o: -o[0]):
        extra = g.pre_bytes - g.auto_bytes
        take = min(r, left / extra)
        saved += take * g.cast_ms
        left -= take * extra
        if left <= 0:
            break
    return saved


def _meet(groups, streamed, compute: float, transfer: float, gbps: float) -> float:
    """min over fp8-transfer fractions of max(compute, transfer): switch the blocks that save
    the most bus time per ms of cast first, stop where the two meet."""
    options = [(g, s) for g, s in zip(groups, streamed) if s and g.pre_bytes > g.auto_bytes]
    options.sort(key=lambda o: -((o[0].pre_bytes - o[0].auto_bytes) / (o[0].cast_ms or 1e-12)))
    for g, s in options:
        if compute >= transfer:
            break
        d_transfer = (g.pre_bytes - g.auto_bytes) / (gbps * 1e6)
        d_compute = g.cast_ms
        # switching x blocks: compute + x d_compute = transfer - x d_transfer
        x = min(s, (transfer - compute) / (d_compute + d_transfer))
        compute += x * d_compute
        transfer -= x * d_transfer
    return max(compute, transfer)


def _relaxed(groups, compute_ms: float, room: int, gbps: float) -> float:
    """For very many groups: resident bytes relaxed to fill the room exactly, every block in
    its smallest form, no casts at all. Looser than the enumeration, still a floor."""
    slot = min(g.auto_bytes for g in groups)
    total = sum(g.count * g.auto_bytes for g in groups)
    must_stream = 0 if room >= total else max(0, total - max(0, room - slot))
    return max(compute_ms, must_stream / (gbps * 1e6))
