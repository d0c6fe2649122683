"""The plan file of a searched candidate, and both experts' placements of a two-expert model."""

from __future__ import annotations

import dataclasses

from planner.app.request import ProfileSource, TuneRequest
from planner.costmodel import CostModel, Prediction
from planner.search import Scored, SearchResult
from planner.space import space_of
from runtime.plan import Plan, Predictions, Target, build_plan


def plan_of(inventory, source: ProfileSource, scored: Scored, budget: int,
            on_disk: frozenset[str] = frozenset(), disk_floor_bytes: int = 0,
            formats=None, pruned=None) -> tuple[Plan, Prediction]:
    """The plan file for a scored candidate, with the cost model's full prediction; the
    streamed blocks named in `on_disk` live on the disk tier, and the floor reads at least
    `disk_floor_bytes` from it (planner.host_ram.Choice). `formats` (block -> format) and
    `pruned` (block -> units) for a mixed plan, whose `inventory` holds those blocks converted."""
    c = scored.candidate
    profile = source.profiles[c.cfg]
    space = space_of(inventory, tuple(source.profiles))
    layout = space.layout(c)
    if on_disk:
        layout = dataclasses.replace(layout, on_disk=tuple(b.name in on_disk for b in inventory.blocks))
    prediction = CostModel(inventory, profile).predict(layout, budget, disk_floor_bytes)
    streamed = {b.name for b, s in zip(inventory.blocks, layout.streamed) if s}
    plan = build_plan(
        inventory,
        streamed,
        workload=profile.workload,
        target=Target(source.target_name, budget),
        prefetch_depth=c.depth,
        host_memory=c.host_memory,
        cast=c.cast,
        casts={b.name: cast for b, cast in zip(inventory.blocks, layout.casts)},
        predictions=Predictions(prediction.step_ms, prediction.peak_vram_bytes, prediction.lower_bound_ms),
        profile_id=source.profile_id,
        formats=formats,
        pruned=pruned,
        on_disk=on_disk,
    )
    return plan, prediction

def experts_spec(model_id: str):
    from runtime.catalog import find_model

    spec = find_model(model_id)
    return spec.experts if spec is not None else None


def place_experts(inv, source: ProfileSource, result: SearchResult, req: TuneRequest, host,
                  best: Scored, keep_first: bool = False):
    """Both experts' placements of a two-expert model, chosen together among the search's
    candidates within both budgets (`planner.experts.choose_experts`), `best` first so that
    ties keep it; `keep_first` keeps `best` for the first expert (measured by --verify).
    Returns (plan, first expert's prediction, its candidate, host choice, both phases): the
    plan carries the second expert's placement where it differs."""
    from planner.experts import plan_experts
    from planner.host_ram import Evaluator, pinned_bytes, streamed_bytes, tiered
    from runtime.catalog import get_model
    from runtime.plan import with_experts

    spec = get_model(req.model_id)
    ev = Evaluator(inv, source.profiles)
    cfg = best.candidate.cfg
    options = [best] + [t.scored for t in host.fits  # choose's, within both budgets (experts=True)
                        if t.scored.candidate != best.candidate and t.scored.candidate.cfg == cfg]
    space = space_of(inv, tuple(source.profiles))
    model = CostModel(inv, source.profiles[cfg])
    h, low, phases = plan_experts(
        model, [space.layout(s.candidate) for s in options], spec.experts, spec.default_steps,
        req.budget_bytes, high=0 if keep_first else None,
    )
    high = options[h]
    tiers = {i: tiered(ev, options[i], host.parts, host.host_ram_bytes, experts=True) for i in (h, low)}
    floor = host.disk_floor_bytes
    plan, prediction = plan_of(inv, source, high, req.budget_bytes, tiers[h].on_disk, floor)
    if options[low].candidate != high.candidate or tiers[low].on_disk != tiers[h].on_disk:
        second, _ = plan_of(inv, source, options[low], req.budget_bytes, tiers[low].on_disk, floor)
        plan = with_experts(plan, {spec.experts.attrs[1]: second})
    # one expert packed at a time
    pinned = max(pinned_bytes(ev, options[i].candidate, tiers[i].on_disk) for i in (h, low))
    worst = max((tiers[i] for i in (h, low)), key=lambda t: t.host.peak_bytes)
    host = dataclasses.replace(host, scored=high, pinned_bytes=pinned,
                               streamed_bytes=streamed_bytes(ev, high.candidate),
                               changed=high.candidate != result.best.candidate,
                               host=worst.host, on_disk=tiers[h].on_disk, step_ms=tiers[h].step_ms,
                               disk_ms=tiers[h].disk_ms)
    return plan, prediction, high, host, phases
