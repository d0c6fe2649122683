"""Host RAM as part of the budget, and ties that go to fewer streamed bytes.

The search (planner/search.py) ranks candidates by predicted step time under the VRAM budget.
Two things it does not see are settled here, after it, through its public `Evaluator`:

- Pinned host buffers cannot be swapped out: the streamed blocks' host copies (bf16 for an fp8
  model cast on the host, `cast pre`) must fit the host RAM the user allows (`--host-ram`).
  A candidate over it loses to one that fits: `cast auto` (fp8 on the host), more residents,
  or pageable buffers.
- Where several candidates predict the same step time, the one that streams the fewest bytes
  wins (then the one that pins the least): a model that fits the GPU stays resident instead of
  streaming blocks and pinning host RAM for nothing.

The pool is what the search found (its best, the Pareto front, the peer policies) plus, for
each, the variants that move fewer bytes or pin none: every cast and host memory kind, the fill
kind filled to the most that fits, and every block resident.
"""

from __future__ import annotations

import dataclasses

from planner.search import Evaluator, Scored, SearchResult
from planner.space import Candidate, Pattern
from runtime.errors import UserError
from runtime.plan import HostMemory

# A reference GPU is planned for a machine we cannot see: this much host RAM is assumed
# unless --host-ram says otherwise (a workstation beside a 24 GB card can pin the ~42 GB a
# 64 GB FLUX.2 streams; a 32 GB desktop passes --host-ram 32GB and gets plans that fit it).
REFERENCE_HOST_RAM_BYTES = 64 << 30
TIE_RELATIVE = 1e-9  # the same predicted speed, up to float rounding: never slower than a peer


@dataclasses.dataclass(frozen=True)
class Choice:
    scored: Scored
    pinned_bytes: int  # host bytes pinned for the streamed blocks
    streamed_bytes: int  # bytes copied host-to-device per forward
    host_ram_bytes: int  # the host RAM limit it was chosen under
    changed: bool  # True where it differs from the search's own best


def streamed_bytes(ev: Evaluator, c: Candidate) -> int:
    """Bytes the streamed blocks occupy on the host (and move per forward) in their cast."""
    layout = ev.space.layout(c)
    totals = ev.models[c.cfg].dev_total
    return sum(totals[cast][i] for i, (s, cast) in enumerate(zip(layout.streamed, layout.casts)) if s)


def pinned_bytes(ev: Evaluator, c: Candidate) -> int:
    return streamed_bytes(ev, c) if c.host_memory is HostMemory.PINNED else 0


def choose(
    inventory, profiles, result: SearchResult, vram_budget: int, host_ram: int
) -> Choice:
    """The fastest candidate within both budgets; ties to fewer streamed, then pinned, bytes,
    then the search's own tie-break (a forward timed between device synchronisations)."""
    ev = Evaluator(inventory, profiles)
    fits = fitting(ev, result, host_ram)
    if not fits:  # cannot happen: pageable stream-all fits whenever the search found anything
        raise UserError("no plan fits both budgets: give a larger --vram or --host-ram")
    fastest = min(s.step_ms for s in fits)
    tied = [s for s in fits if s.step_ms <= fastest * (1 + TIE_RELATIVE) + 1e-9]
    best = min(
        tied,
        key=lambda s: (streamed_bytes(ev, s.candidate), pinned_bytes(ev, s.candidate),
                       ev.synchronized_ms(s.candidate), s.step_ms, s.peak_vram_bytes,
                       s.candidate.describe()),
    )
    return Choice(
        scored=best,
        pinned_bytes=pinned_bytes(ev, best.candidate),
        streamed_bytes=streamed_bytes(ev, best.candidate),
        host_ram_bytes=host_ram,
        changed=best.candidate != result.best.candidate,
    )


def fitting(ev: Evaluator, result: SearchResult, host_ram: int) -> list[Scored]:
    """The search's candidates (best, Pareto front, peer policies) within both budgets."""
    room = result.room_bytes  # what a peak may fill within the VRAM budget (planner.reserve)
    pool = _pool(ev, result, room)
    return [s for s in pool if s.peak_vram_bytes <= room and pinned_bytes(ev, s.candidate) <= host_ram]


def _pool(ev: Evaluator, result: SearchResult, room: int) -> list[Scored]:
    base = [result.best, *result.pareto, *(s for _, s in result.policies if s is not None)]
    found: dict[Candidate, Scored] = {s.candidate: s for s in base}
    space = ev.space
    for s in base:
        for variant in _variants(ev, s.candidate, room):
            _add(ev, found, variant, room)
    everything = {run.kind: len(run.positions) for run in space.kinds}
    for depth in space.depths:
        for cast in space.casts:
            for cfg in space.cfgs:
                c = space.candidate(everything, Pattern.PREFIX, depth, cast, HostMemory.PINNED, cfg)
                _add(ev, found, c, room)
    return list(found.values())


def _add(ev: Evaluator, found: dict, c: Candidate, room: int) -> None:
    c = ev.with_precast(c, room)
    if c not in found and ev.peak(c) <= room:
        found[c] = ev.score(c)


def _variants(ev: Evaluator, c: Candidate, room: int):
    """`c` with every streamed cast and host memory kind, the residents keeping their cast or
    taking the streamed one, each also with the fill kind filled to the most that fits."""
    space = ev.space
    if c.pattern is Pattern.EXPLICIT:
        for cast in space.casts:
            for host in space.hosts:
                yield dataclasses.replace(c, cast=cast, host_memory=host)
        return
    others = {k: n for k, n in c.resident if k != space.fill_kind}
    for cast in space.casts:
        for host in space.hosts:
            for rcast in {c.cast_of_resident, cast}:
                yield space.candidate(dict(c.resident), c.pattern, c.depth, cast, host, c.cfg, rcast, c.precast)
                fill = ev.max_fill(others, c.pattern, c.depth, cast, host, c.cfg, room, rcast)
                yield space.candidate({**others, space.fill_kind: fill}, c.pattern, c.depth, cast, host, c.cfg, rcast)
