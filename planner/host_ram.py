"""Host RAM as part of the budget: every candidate's run, phase by phase, within `--host-ram`.

The search (planner/search.py) ranks candidates by predicted step time under the VRAM budget.
What it does not see is settled here, after it, through its public `Evaluator`:

- Every phase of the run must fit the host RAM the user allows (`planner.host_peak`): pinned
  and pageable packs alike, the text encoders while encoding, a parked expert, the VAE, the
  process baseline. Where the RAM-tier packs do not fit, the largest streamed blocks move to
  the disk tier, read each step at the profile's disk bandwidth: the step is then at least
  the time those reads take. A candidate that no tiering brings within the limit is no fit.
- Two costs the predicted step does not show make a plan *heavy*: streamed blocks read from
  the disk tier each step, and streamed blocks kept dequantized in host RAM (`pre` on fp8 or
  quantized storage). A heavy plan wins only where it is predicted more than `HEAVY_MARGIN`
  faster, per cost, than the fastest plan without that cost (`rank_ms`); the summary names the
  faster heavy plan it passed over.
- Where several candidates predict the same step time, the one that reads the fewest bytes
  from disk, then streams the fewest bytes, then pins the least wins: a model that fits the
  GPU stays resident instead of streaming blocks and pinning host RAM for nothing.

The pool is what the search found (its best, the Pareto front, the peer policies) plus, for
each, the variants that move fewer bytes or pin none: every cast and host memory kind, the fill
kind filled to the most that fits, and every block resident.
"""

from __future__ import annotations

import dataclasses

from planner.budget import format_size
from planner.host_peak import HostParts, HostPeak, Streamed, TierOrder, all_on_disk, host_peak, place
from planner.search import Evaluator, Scored, SearchResult
from planner.space import Candidate, Pattern
from runtime.errors import UserError
from runtime.plan import CastMode, HostMemory

# A reference GPU is planned for a machine we cannot see: this much host RAM is assumed
# unless --host-ram says otherwise (a workstation beside a 24 GB card; a 32 GB desktop passes
# --host-ram 32GB and gets plans that fit it).
REFERENCE_HOST_RAM_BYTES = 64 << 30
TIE_RELATIVE = 1e-9  # the same predicted speed, up to float rounding: never slower than a peer
# What a heavy plan must gain, per cost, to beat a lighter one. The disk tier: the drive's
# bandwidth is the profile's figure (a reference profile's is an assumed Gen3 NVMe drive),
# shared with everything else the machine reads, and apply writes the pack file before the
# first step. Dequantized on the host: apply dequantizes every streamed block on the CPU
# before the first step, and the host holds the compute dtype (2x fp8's bytes, 3.5x Q4_K's),
# the memory the format was chosen to save. Neither is in the step the cost model predicts; 5 %
# is what the 1.7 % worst replay error of the measured parts (bench/results/replay_h100.json)
# leaves for them. The peers hold neither cost, so a plan ranked this way is still never
# predicted slower than a peer policy that fits.
HEAVY_MARGIN = 0.05


class HostRamRefusal(UserError):
    """No plan's run fits the host RAM; `by_encoders`: the text encoders alone are over it
    (no placement, tier or transformer format changes that)."""

    def __init__(self, message: str, by_encoders: bool) -> None:
        super().__init__(message)
        self.by_encoders = by_encoders


@dataclasses.dataclass(frozen=True)
class Tiered:
    """A scored candidate with its streamed blocks' tiers and the run's host memory."""

    scored: Scored
    host: HostPeak
    on_disk: frozenset[str]  # names of the streamed blocks on the disk tier
    disk_ms: float  # one step's disk reads at the profile's disk bandwidth
    step_ms: float  # the cost model's step with the disk tier as the copies' third stage


@dataclasses.dataclass(frozen=True)
class Choice:
    scored: Scored
    pinned_bytes: int  # host bytes pinned for the streamed blocks
    streamed_bytes: int  # bytes copied host-to-device per forward
    host_ram_bytes: int  # the host RAM limit it was chosen under
    changed: bool  # True where it differs from the search's own best
    host: HostPeak | None = None  # the run's host memory by phase
    on_disk: frozenset[str] = frozenset()
    step_ms: float | None = None  # with the disk reads; None: the scored step
    parts: HostParts | None = None  # what the run holds beside the packs (planner.host_peak)
    disk_ms: float = 0.0
    disk_floor_bytes: int = 0  # the fewest disk-tier bytes any plan within both budgets reads
    passed_over: "PassedOver | None" = None  # the faster heavy plan a lighter one won over
    fits: tuple[Tiered, ...] = ()  # every candidate within both budgets it was chosen from


@dataclasses.dataclass(frozen=True)
class PassedOver:
    """The fastest plan within both budgets, where a lighter one was chosen over it."""

    step_ms: float
    disk_bytes: int  # read from the disk tier per forward
    dequantized_bytes: int  # streamed blocks' host bytes dequantized (`pre`); 0: kept as stored

    def to_dict(self) -> dict:
        return {"step_ms": self.step_ms, "disk_bytes": self.disk_bytes,
                "dequantized_bytes": self.dequantized_bytes}


def streamed_sizes(ev: Evaluator, c: Candidate) -> tuple[int, ...]:
    """Host bytes of each streamed block in its cast, in stream order."""
    layout = ev.space.layout(c)
    totals = ev.models[c.cfg].dev_total
    return tuple(totals[cast][i] for i, (s, cast) in enumerate(zip(layout.streamed, layout.casts)) if s)


def streamed_bytes(ev: Evaluator, c: Candidate) -> int:
    """Bytes the streamed blocks occupy on the host (and move per forward) in their cast."""
    return sum(streamed_sizes(ev, c))


def pinned_bytes(ev: Evaluator, c: Candidate, on_disk: frozenset[str] = frozenset()) -> int:
    """Host bytes pinned for the RAM-tier packs (a disk-tier block pins only its staging)."""
    if c.host_memory is not HostMemory.PINNED:
        return 0
    layout = ev.space.layout(c)
    totals = ev.models[c.cfg].dev_total
    return sum(totals[cast][i] for i, (b, s, cast) in enumerate(zip(ev.inventory.blocks, layout.streamed, layout.casts))
               if s and b.name not in on_disk)


def parts_for(ev: Evaluator, c: Candidate, parts: HostParts) -> HostParts:
    """`parts` with the candidate's device peak where the device is the host (a CPU profile)."""
    if ev.models[c.cfg].profile.device != "cpu":
        return parts
    return dataclasses.replace(parts, device_bytes=ev.peak(c))


def tiered(ev: Evaluator, s: Scored, parts: HostParts, host_ram: int, experts: bool = False) -> Tiered | None:
    """`s` with the tiers that fit `host_ram` (RAM first), or None where none do: of the
    orders that fill the disk tier (`TierOrder`), the one the cost model steps fastest with."""
    found = [t for t in (_tiered(ev, s, parts, host_ram, experts, order) for order in TierOrder) if t]
    return min(found, key=lambda t: (t.step_ms, t.host.disk_bytes), default=None)


def _tiered(ev: Evaluator, s: Scored, parts: HostParts, host_ram: int, experts: bool,
            order: TierOrder) -> Tiered | None:
    c = s.candidate
    sizes = streamed_sizes(ev, c)
    found = place(parts_for(ev, c, parts), host_ram, sizes, sizes if experts else None, order)
    if found is None:
        return None
    peak, first, _ = found
    layout = ev.space.layout(c)
    streamed_names = [b.name for b, st in zip(ev.inventory.blocks, layout.streamed) if st]
    on_disk = frozenset(n for n, d in zip(streamed_names, first.on_disk) if d)
    if not on_disk:
        return Tiered(s, peak, on_disk, 0.0, s.step_ms)
    flags = tuple(b.name in on_disk for b in ev.inventory.blocks)
    step = ev.models[c.cfg].step_ms(dataclasses.replace(layout, on_disk=flags))  # the third stage
    return Tiered(s, peak, on_disk, disk_step_ms(ev, c, first), step)


def disk_step_ms(ev: Evaluator, c: Candidate, streamed: Streamed) -> float:
    """One step's disk-tier reads at the profile's disk bandwidth (each forward reads them)."""
    return ev.models[c.cfg].disk_floor_ms(streamed.disk_bytes) if streamed.disk_bytes else 0.0


def dequantized_bytes(ev: Evaluator, c: Candidate) -> int:
    """Host bytes of the streamed blocks kept dequantized (`pre`) where their storage is
    smaller (fp8, quantized): 0 where every streamed block stays on the host as stored."""
    layout = ev.space.layout(c)
    totals = ev.models[c.cfg].dev_total
    return sum(totals[cast][i] for i, (s, cast) in enumerate(zip(layout.streamed, layout.casts))
               if s and cast is CastMode.PRE and totals[CastMode.PRE][i] > totals[CastMode.AUTO][i])


def rank_ms(ev: Evaluator, t: Tiered) -> float:
    """The step `choose` ranks `t` by: its predicted step, `HEAVY_MARGIN` more for each cost
    the step does not show (disk-tier reads; streamed blocks dequantized on the host)."""
    heavy = bool(t.on_disk) + bool(dequantized_bytes(ev, t.scored.candidate))
    return t.step_ms * (1 + HEAVY_MARGIN * heavy)


def choose(inventory, profiles, result: SearchResult, vram_budget: int, host_ram: int,
           parts: HostParts, experts: bool = False) -> Choice:
    """The fastest candidate within both budgets by `rank_ms`; ties to fewer disk, streamed,
    then pinned bytes, then the search's own tie-break (a forward timed between device
    synchronisations). Refuses, naming what would fit, where no candidate's run fits `host_ram`."""
    ev = Evaluator(inventory, profiles)
    fits = fitting(ev, result, host_ram, parts, experts)
    if not fits:
        base = parts.baseline_bytes
        raise HostRamRefusal(refusal(ev, result, host_ram, parts, experts),
                             by_encoders=base + parts.text_encoder_bytes > host_ram)
    best = min(
        _tied(fits, [rank_ms(ev, t) for t in fits]),
        key=lambda t: (t.host.disk_bytes, streamed_bytes(ev, t.scored.candidate),
                       pinned_bytes(ev, t.scored.candidate, t.on_disk),
                       ev.synchronized_ms(t.scored.candidate), t.scored.step_ms,
                       t.scored.peak_vram_bytes, t.scored.candidate.describe()),
    )
    return Choice(
        scored=best.scored,
        pinned_bytes=pinned_bytes(ev, best.scored.candidate, best.on_disk),
        streamed_bytes=streamed_bytes(ev, best.scored.candidate),
        host_ram_bytes=host_ram,
        changed=best.scored.candidate != result.best.candidate,
        host=best.host,
        on_disk=best.on_disk,
        step_ms=best.step_ms,
        parts=parts,
        disk_ms=best.disk_ms,
        disk_floor_bytes=min(t.host.disk_bytes for t in fits),
        passed_over=_passed_over(ev, fits, best),
        fits=tuple(fits),
    )


def _tied(fits: list[Tiered], values: list[float]) -> list[Tiered]:
    """The fits whose value is the least, up to float rounding (`TIE_RELATIVE`)."""
    least = min(values)
    return [t for t, v in zip(fits, values) if v <= least * (1 + TIE_RELATIVE) + 1e-9]


def _passed_over(ev: Evaluator, fits: list[Tiered], best: Tiered) -> PassedOver | None:
    fastest = _tied(fits, [t.step_ms for t in fits])
    if any(t is best for t in fastest):
        return None
    quickest = min(fastest, key=lambda t: (t.host.disk_bytes, dequantized_bytes(ev, t.scored.candidate)))
    return PassedOver(quickest.step_ms, quickest.host.disk_bytes,
                      dequantized_bytes(ev, quickest.scored.candidate))


def fitting(ev: Evaluator, result: SearchResult, host_ram: int, parts: HostParts,
            experts: bool = False) -> list[Tiered]:
    """The search's candidates (best, Pareto front, peer policies) within both budgets."""
    room = result.room_bytes  # what a peak may fill within the VRAM budget (planner.reserve)
    out = []
    for s in _pool(ev, result, room):
        if s.peak_vram_bytes <= room:
            t = tiered(ev, s, parts, host_ram, experts)
            if t is not None:
                out.append(t)
    return out


def all_ram_peak(ev: Evaluator, c: Candidate, parts: HostParts, experts: bool = False) -> HostPeak:
    """The run's host memory with every streamed block in RAM (how the peers run)."""
    sizes = streamed_sizes(ev, c)
    return _peak_with(ev, c, parts, Streamed(sizes, tuple(False for _ in sizes)), experts)


def _peak_with(ev: Evaluator, c: Candidate, parts: HostParts, streamed: Streamed, experts: bool) -> HostPeak:
    """The run's host memory with `c`'s streamed blocks tiered as `streamed` (each expert alike)."""
    return host_peak(parts_for(ev, c, parts), streamed, streamed if experts else None)


def refusal(ev: Evaluator, result: SearchResult, host_ram: int, parts: HostParts, experts: bool) -> str:
    """One sentence: why no plan fits `host_ram`, and the host RAM that would."""
    model = ev.inventory.model_id
    base = parts.baseline_bytes
    if base + parts.text_encoder_bytes > host_ram:
        need = base + parts.text_encoder_bytes
        return (f"no plan for {model} fits {format_size(host_ram)} of host RAM: its text encoders "
                f"({format_size(parts.text_encoder_bytes)}) and the process baseline "
                f"({format_size(base)}) need {format_size(need)} while encoding; give --host-ram "
                f"{-(-need // 2**30)}GB or more")
    pool = [s for s in _pool(ev, result, result.room_bytes) if s.peak_vram_bytes <= result.room_bytes]
    need = min(
        (_peak_with(ev, s.candidate, parts, all_on_disk(streamed_sizes(ev, s.candidate)), experts).peak_bytes
         for s in pool),
        default=None,
    )
    what = f"give --host-ram {-(-need // 2**30)}GB or more" if need else "give a larger --vram"
    return (f"no plan for {model} within the VRAM budget fits {format_size(host_ram)} of host RAM, "
            f"even with every streamed block on the disk tier: {what}, or a smaller storage format "
            f"(`planner tune --formats` ranks them)")


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
