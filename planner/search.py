"""The search: Optuna (TPE, seeded) over the structured space, under a VRAM budget.

Parameters Optuna sees: the resident count of every kind but one, the pattern, the prefetch
depth, the host memory kind, the cast modes of streamed and of resident blocks (fp8 storage
only) and the CFG mode (CFG models only). Resident blocks kept in fp8 are then pre-cast to
bf16, as many as the VRAM left over holds (`Candidate.precast`). The remaining kind (the one with the most blocks, the finest step) is filled to the
most that fits the budget less a `slack` of 0..MAX_SLACK blocks, so nearly every trial is
feasible. Trials over the budget are marked infeasible through the sampler's constraints.
"The budget" inside is the room a plan's peak may fill: the VRAM budget less what the card
keeps outside the allocator and a margin (`planner.reserve`).
Before the study, an analytic pass scores every candidate with the fill kind filled to the
most that fits (slack 0; 480 candidates for bf16 FLUX, 1920 for fp8); its best are enqueued
next to the peer policies. The peers are also scored directly, so the result is never
predicted slower than any of them. Deterministic for a seed unless a timeout cuts the study.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import warnings
from typing import Callable, Mapping

from planner.costmodel import CostModel
from planner.policies import Policy, policy_candidates
from planner.space import Candidate, Pattern, Space, space_of
from runtime.errors import UserError
from runtime.plan import CastMode
from runtime.workload import CfgMode

DEFAULT_TRIALS = 160
MAX_SLACK = 3
FRONTIER_LIMIT = 4096  # most slack-0 candidates the analytic pass scores before the study
SEEDED_FRONTIER = 8  # best of them enqueued into the study next to the peer policies
_PATTERNS = (Pattern.SPREAD, Pattern.PREFIX, Pattern.SUFFIX)


@dataclasses.dataclass(frozen=True)
class Settings:
    budget_bytes: int
    trials: int = DEFAULT_TRIALS
    timeout_s: float | None = None
    seed: int = 0
    # called after every trial; it may raise to abandon the search (ComfyUI's interrupt)
    between_trials: Callable[[], None] | None = None


@dataclasses.dataclass(frozen=True)
class Scored:
    candidate: Candidate
    step_ms: float
    peak_vram_bytes: int


@dataclasses.dataclass(frozen=True)
class SearchResult:
    best: Scored
    policies: tuple[tuple[Policy, Scored | None], ...]
    pareto: tuple[Scored, ...]  # every evaluated candidate no other beats on both peak and time
    trials: int
    seconds: float
    min_budget_bytes: int
    room_bytes: int  # what a plan's peak may fill within the budget (planner.reserve)


class Evaluator:
    """Scores candidates with the cost model of their CFG mode; caches by candidate."""

    def __init__(self, inventory, profiles: Mapping[CfgMode, object], space: Space | None = None):
        if not profiles:
            raise ValueError("at least one profile is needed")
        self.inventory = inventory
        self.models = {cfg: CostModel(inventory, p) for cfg, p in profiles.items()}
        self.space = space or space_of(inventory, tuple(profiles))
        self.scored: dict[Candidate, Scored] = {}
        self._peaks: dict[Candidate, int] = {}

    def peak(self, c: Candidate) -> int:
        if c not in self._peaks:
            self._peaks[c] = self.models[c.cfg].peak_bytes(self.space.layout(c))
        return self._peaks[c]

    def score(self, c: Candidate) -> Scored:
        if c not in self.scored:
            step = self.models[c.cfg].step_ms(self.space.layout(c))
            self.scored[c] = Scored(c, step, self.peak(c))
        return self.scored[c]

    def usable(self, budget: int) -> int:
        """What a candidate's peak may reach within `budget` (`planner.reserve`)."""
        return min(m.usable_bytes(budget) for m in self.models.values())

    def synchronized_ms(self, c: Candidate) -> float:
        return self.models[c.cfg].synchronized_step_ms(self.space.layout(c))

    def min_peak_bytes(self) -> int:
        """The smallest peak of any candidate: every block streamed at depth 1."""
        counts = {run.kind: 0 for run in self.space.kinds}
        return min(
            self.peak(self.space.candidate(counts, Pattern.PREFIX, 1, cast, self.space.hosts[0], cfg))
            for cast in self.space.casts
            for cfg in self.space.cfgs
        )

    def max_fill(self, counts: dict[str, int], pattern, depth, cast, host, cfg, budget: int,
                 rcast=None) -> int:
        """Most blocks of the fill kind that can stay resident with `counts` of the others
        (binary search: one more resident never lowers the peak, the ring at most gives back
        the slot the block needed)."""
        fill = self.space.fill_kind

        def fits(n: int) -> bool:
            return self.peak(self.space.candidate({**counts, fill: n}, pattern, depth, cast, host, cfg, rcast)) <= budget

        lo, hi = 0, len(self.space.kind(fill).positions)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def with_precast(self, c: Candidate, budget: int) -> Candidate:
        """`c` with as many fp8 residents pre-cast to bf16 as fit the budget (binary search:
        the peak grows with every block pre-cast)."""
        if c.cast_of_resident is not CastMode.AUTO or self.peak(c) > budget:
            return c
        def make(n: int) -> Candidate:
            return self.space.candidate(dict(c.resident), c.pattern, c.depth, c.cast, c.host_memory, c.cfg,
                                        c.cast_of_resident, n)
        lo, hi = 0, sum(n for _, n in c.resident)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.peak(make(mid)) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return make(lo)

    def complete(self, counts: dict[str, int], pattern, depth, cast, rcast, host, cfg, slack: int,
                 budget: int) -> Candidate:
        """The candidate these choices make: the fill kind filled to the most that fits less
        `slack`, then fp8 residents pre-cast where the VRAM left over allows."""
        fill = max(0, self.max_fill(counts, pattern, depth, cast, host, cfg, budget, rcast) - slack)
        c = self.space.candidate({**counts, self.space.fill_kind: fill}, pattern, depth, cast, host, cfg, rcast)
        return self.with_precast(c, budget)


def pareto_front(scored) -> tuple[Scored, ...]:
    """Candidates not beaten on both peak VRAM and step time, by ascending peak."""
    front: list[Scored] = []
    for s in sorted(scored, key=lambda s: (s.peak_vram_bytes, s.step_ms)):
        if not front or s.step_ms < front[-1].step_ms:
            front.append(s)
    return tuple(front)


def _best(scored, budget: int, ev: "Evaluator | None" = None) -> Scored | None:
    """The fastest candidate within `budget`. Among those as fast (a compute-bound step has
    many), the one a forward timed between device synchronisations finds fastest: usually the
    shallower ring, which prefetches less at the tail of a forward."""
    feasible = [s for s in scored if s.peak_vram_bytes <= budget]
    best = min(feasible, key=lambda s: (s.step_ms, s.peak_vram_bytes), default=None)
    if best is None or ev is None:
        return best
    ties = [s for s in feasible if s.step_ms <= best.step_ms * (1 + 1e-9)]
    return min(ties, key=lambda s: (ev.synchronized_ms(s.candidate), s.step_ms, s.peak_vram_bytes))


def check_budget(ev: Evaluator, budget: int) -> int:
    """The smallest budget any plan fits (refusing `budget` below it, or a card too small)."""
    from planner.budget import format_size

    peak = ev.min_peak_bytes()
    need = max(m.budget_needed(peak) or 0 for m in ev.models.values())
    if any(m.budget_needed(peak) is None for m in ev.models.values()):
        raise UserError(
            f"no plan of {ev.inventory.model_id} at this workload fits this card: even with every block "
            f"streamed it needs {format_size(peak)} beside what the card keeps for the CUDA context; "
            f"use a smaller resolution or batch, or a larger card"
        )
    if ev.usable(budget) < peak:
        raise UserError(
            f"no plan fits a VRAM budget of {format_size(budget)} for {ev.inventory.model_id} at this "
            f"workload: give --vram {format_size(_round_up(need)).replace(' ', '')} or more"
        )
    return need


def _round_up(num_bytes: int) -> int:
    """`num_bytes` rounded up to what `format_size` shows (0.01 of its unit), so it fits."""
    unit = 1
    while num_bytes >= 1024 * unit and unit < 2**40:
        unit *= 1024
    step = unit / 100 if unit > 1 else 1
    return int(math.ceil(num_bytes / step) * step)


def search(inventory, profiles: Mapping[CfgMode, object], settings: Settings) -> SearchResult:
    """The fastest predicted candidate within the budget, with the peers and the Pareto front."""
    started = time.perf_counter()
    ev = Evaluator(inventory, profiles)
    need = check_budget(ev, settings.budget_bytes)
    room = ev.usable(settings.budget_bytes)
    peers = policy_candidates(ev.space, ev.peak, room)
    policies = tuple((p, ev.score(c) if c is not None else None) for p, c in peers.items())
    frontier = _frontier(ev, room)
    seeds = [c for c in peers.values() if c is not None] + [s.candidate for s in frontier[:SEEDED_FRONTIER]]
    trials = _run_study(ev, settings, seeds, room)
    best = _best(ev.scored.values(), room, ev)
    assert best is not None, "stream-all fits whenever the budget check passed"
    return SearchResult(
        best=best,
        policies=policies,
        pareto=pareto_front(ev.scored.values()),
        trials=trials,
        seconds=time.perf_counter() - started,
        min_budget_bytes=need,
        room_bytes=room,
    )


def _frontier(ev: Evaluator, budget: int) -> list[Scored]:
    """The analytic pass: every candidate whose fill kind is filled to the most that fits,
    best first. Step time falls as residents grow, so the optimum is almost always here; the
    study then explores around it (slack, patterns) and seeds from it. Skipped (empty) where
    the space is too large for it."""
    space = ev.space
    others = [run for run in space.kinds if run.kind != space.fill_kind]
    # where every kind is one block (a UNet's), every count is all-or-nothing: patterns coincide
    patterns = _PATTERNS if any(len(r.positions) > 1 for r in space.kinds) else (Pattern.PREFIX,)
    combos = itertools.product(
        *(range(len(r.positions) + 1) for r in others),
        patterns, space.depths, space.casts, space.casts, space.hosts, space.cfgs,
    )
    size = len(patterns) * len(space.depths) * len(space.casts) ** 2 * len(space.hosts) * len(space.cfgs)
    for r in others:
        size *= len(r.positions) + 1
    if size > FRONTIER_LIMIT:
        return []
    found = {}
    for *numbers, pattern, depth, cast, rcast, host, cfg in combos:
        counts = {r.kind: n for r, n in zip(others, numbers)}
        c = ev.complete(counts, pattern, depth, cast, rcast, host, cfg, 0, budget)
        if c not in found and ev.peak(c) <= budget:
            found[c] = ev.score(c)
    return sorted(found.values(), key=lambda s: (s.step_ms, s.peak_vram_bytes))


def _run_study(ev: Evaluator, settings: Settings, seeds: list[Candidate], budget: int) -> int:
    """The study; `budget` is the room a candidate's peak may fill (`Evaluator.usable`)."""
    import optuna

    space = ev.space
    others = [run for run in space.kinds if run.kind != space.fill_kind]

    def decode(trial) -> Candidate:
        counts = {r.kind: trial.suggest_int(f"resident_{r.kind}", 0, len(r.positions)) for r in others}
        pattern = Pattern(trial.suggest_categorical("pattern", [p.value for p in _PATTERNS]))
        depth = trial.suggest_int("depth", min(space.depths), max(space.depths))
        cast = _choice(trial, "cast", space.casts)
        rcast = _choice(trial, "resident_cast", space.casts)
        host = _choice(trial, "host_memory", space.hosts)
        cfg = _choice(trial, "cfg", space.cfgs)
        slack = trial.suggest_int("slack", 0, MAX_SLACK)
        return ev.complete(counts, pattern, depth, cast, rcast, host, cfg, slack, budget)

    def objective(trial) -> float:
        scored = ev.score(decode(trial))
        over = float(scored.peak_vram_bytes - budget)
        if hasattr(trial, "set_constraint"):  # optuna >= 5
            trial.set_constraint("over_budget", over)
        else:
            trial.set_user_attr("over_budget", over)
        return scored.step_ms

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=settings.seed, n_startup_trials=20, multivariate=True, **_constraints(optuna)
            )
            study = optuna.create_study(direction="minimize", sampler=sampler)
            for c in seeds:
                study.enqueue_trial(_params(ev, c, budget, others), skip_if_exists=True)
            check = settings.between_trials
            callbacks = [] if check is None else [lambda study, trial: check()]
            study.optimize(objective, n_trials=settings.trials, timeout=settings.timeout_s,
                           callbacks=callbacks)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return len(study.trials)


def _constraints(optuna) -> dict:
    """Optuna 5 reads constraints set on the trial; older versions need `constraints_func`."""
    if hasattr(optuna.trial.Trial, "set_constraint"):
        return {}
    return {"constraints_func": lambda t: (t.user_attrs.get("over_budget", 0.0),)}


def _choice(trial, name: str, options: tuple):
    if len(options) == 1:
        return options[0]
    kind = type(options[0])
    return kind(trial.suggest_categorical(name, [o.value for o in options]))


def _params(ev: Evaluator, c: Candidate, budget: int, others) -> dict:
    """Optuna parameters that decode to `c` (or its nearest, where its slack is out of range)."""
    space = ev.space
    counts = {r.kind: c.count(r.kind) for r in others}
    pattern = c.pattern if c.pattern in _PATTERNS else Pattern.PREFIX
    top = ev.max_fill(counts, pattern, c.depth, c.cast, c.host_memory, c.cfg, budget, c.resident_cast)
    params: dict = {f"resident_{k}": n for k, n in counts.items()}
    params.update(pattern=pattern.value, depth=c.depth, slack=min(MAX_SLACK, max(0, top - c.count(space.fill_kind))))
    for name, value, options in (
        ("cast", c.cast, space.casts), ("resident_cast", c.cast_of_resident, space.casts),
        ("host_memory", c.host_memory, space.hosts), ("cfg", c.cfg, space.cfgs),
    ):
        if len(options) > 1:
            params[name] = value.value
    return params


def exhaustive(inventory, profiles: Mapping[CfgMode, object], budget_bytes: int) -> tuple[Scored | None, int]:
    """The best candidate of the whole structured space by enumeration, and the count scored.

    For benchmarks: it scores every candidate that fits the budget (thousands for FLUX).
    """
    ev = Evaluator(inventory, profiles)
    room = ev.usable(budget_bytes)
    count = 0
    for c in ev.space.enumerate():
        c = ev.with_precast(c, room)
        if ev.peak(c) <= room and c not in ev.scored:
            ev.score(c)
            count += 1
    return _best(ev.scored.values(), room, ev), count
