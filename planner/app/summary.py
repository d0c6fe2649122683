"""Everything `planner tune` prints, as JSON-ready data."""

from __future__ import annotations

from planner.app.request import TuneOutcome
from planner.costmodel import CostModel
from planner.space import Candidate, space_of
from runtime.plan import Tier


def host_bytes(outcome: TuneOutcome) -> int:
    """Host RAM the RAM-tier streamed blocks occupy, in the dtype the plan keeps them on the host."""
    model = CostModel(outcome.inventory, outcome.source.profiles[outcome.plan.workload.cfg])
    cast = outcome.plan.streamed[0].cast if outcome.plan.streamed else outcome.plan.blocks[0].cast
    names = {b.name for b in outcome.plan.streamed if b.tier is Tier.RAM}
    return sum(t for b, t in zip(outcome.inventory.blocks, model.dev_total[cast]) if b.name in names)


def summary(outcome: TuneOutcome) -> dict:
    """Everything `planner tune` prints, as JSON-ready data."""
    from runtime.plan import plan_to_dict

    res, plan, pred = outcome.result, outcome.plan, outcome.prediction
    from planner.host_ram import all_ram_peak, pinned_bytes
    from planner.search import Evaluator

    space = space_of(outcome.inventory, tuple(outcome.source.profiles))
    best = outcome.chosen
    ev = Evaluator(outcome.inventory, outcome.source.profiles)
    pinned = {p: pinned_bytes(ev, s.candidate) for p, s in res.policies if s is not None}
    host = outcome.host
    limit = host.host_ram_bytes if host else float("inf")
    two = outcome.experts is not None
    # the peers keep every streamed block in RAM: their runs' host peaks
    needs = {p: all_ram_peak(ev, s.candidate, host.parts, two).peak_bytes
             for p, s in res.policies if s is not None and host is not None and host.parts is not None}
    return {
        "plan_id": outcome.plan_id,
        "plan": plan_to_dict(plan),
        "profile": {
            "id": outcome.source.profile_id,
            "reference": outcome.source.reference,
            "target": outcome.source.target_name,
        },
        "placement": {**best.candidate.to_dict(), "blocks": _counts(best.candidate, space)},
        "host_bytes": host_bytes(outcome),
        "host_ram": {
            "limit_bytes": outcome.host.host_ram_bytes if outcome.host else None,
            "limit_source": outcome.host_ram_source,
            "pinned_bytes": outcome.host.pinned_bytes if outcome.host else None,
            "streamed_bytes": outcome.host.streamed_bytes if outcome.host else None,
            **_host_peak_dict(outcome),
        },
        "host_ram_peak_bytes": host.host.peak_bytes if host and host.host else None,
        "passed_over": _passed_over(outcome),
        "weight_bytes": outcome.inventory.total_bytes,
        "step_ms": pred.step_ms,
        # the run's peak: with experts, the highest of both phases and the switch (one figure
        # wherever tune shows a peak, and the one the peers' rows are compared with)
        "peak_vram_bytes": outcome.experts.peak_vram_bytes if outcome.experts else pred.peak_vram_bytes,
        "device_weight_bytes": pred.device_weight_bytes,
        "lower_bound_ms": pred.lower_bound_ms,
        "ratio_to_bound": pred.step_ms / pred.lower_bound_ms if pred.lower_bound_ms > 0 else None,
        "measured_step_ms": outcome.measured_step_ms,
        "policies": [
            {
                "policy": p.value,
                "peer": p.peer,
                "fits": s is not None and needs.get(p, 0) <= limit,  # VRAM and host RAM
                "fits_vram": s is not None,
                "pinned_bytes": pinned.get(p),
                "host_peak_bytes": needs.get(p),
                "step_ms": s.step_ms if s else None,
                "peak_vram_bytes": s.peak_vram_bytes if s else None,
                "placement": s.candidate.to_dict() if s else None,
            }
            for p, s in res.policies
        ],
        "pareto": [
            {"peak_vram_bytes": s.peak_vram_bytes, "step_ms": s.step_ms, "placement": s.candidate.to_dict()}
            for s in res.pareto
        ],
        "search": {"trials": res.trials, "seconds": res.seconds, "min_budget_bytes": res.min_budget_bytes},
        "experts": _experts_dict(outcome.experts),
        "calibration": _calibration_dict(outcome, space),
    }


def _passed_over(outcome: TuneOutcome) -> dict | None:
    """The faster heavy plan (disk-tier reads, host-side dequantization) the chosen one won over."""
    host = outcome.host
    if host is None or host.passed_over is None or outcome.chosen != host.scored:
        return None
    return host.passed_over.to_dict()


def _host_peak_dict(outcome: TuneOutcome) -> dict:
    """The run's host memory by phase, the disk tier, and what the baseline holds."""
    host = outcome.host
    if host is None or host.host is None:
        return {}
    parts = host.parts
    return {
        **host.host.to_dict(),
        "disk_blocks": sorted(host.on_disk),
        "disk_ms": host.disk_ms,
        "baseline_bytes": parts.baseline_bytes, "baseline_source": parts.baseline_source,
        "text_encoder_bytes": parts.text_encoder_bytes, "vae_bytes": parts.vae_bytes,
        "parked_expert_bytes": parts.parked_expert_bytes,
    }


def _calibration_dict(outcome: TuneOutcome, space) -> dict | None:
    """The profile's calibration and the plan's calibrated step time (None: a reference profile)."""
    cal = outcome.source.calibration
    if cal is None:
        return None
    model = CostModel(outcome.inventory, outcome.source.profiles[outcome.chosen.candidate.cfg])
    step = cal.step_ms(model, space.layout(outcome.chosen.candidate), outcome.prediction.step_ms)
    return {**cal.to_dict(), "step_ms": step}


def _experts_dict(experts) -> dict | None:
    from planner.experts import experts_to_dict

    return experts_to_dict(experts) if experts is not None else None


def _counts(c: Candidate, space) -> dict:
    return {
        run.kind: {"resident": c.count(run.kind), "streamed": len(run.positions) - c.count(run.kind)}
        for run in space.kinds
    }
