"""`planner tune` as a library: find the profile, search, build the plan, store it.

The CLI (and the ComfyUI nodes) build a `TuneRequest` and call `tune()`; everything the CLI
prints comes from `planner.app.summary.summary()`.
"""

from __future__ import annotations

import dataclasses

from planner.app.placing import experts_spec, place_experts, plan_of
from planner.app.profiles import host_parts, host_ram_limit, request_inventory, resolve_profiles, with_weights
from planner.app.request import TuneOutcome, TuneRequest
from planner.app.verify import require_gpu_for_verify, verify
from planner.search import Settings, search
from runtime.errors import UserError


def tune(req: TuneRequest) -> TuneOutcome:
    """Search the space for `req` and store the best plan (and return everything found)."""
    if req.max_error is not None:
        from planner.app.mixed import tune_mixed

        if req.verify:
            raise UserError("--verify and --max-error: verify runs uniform plans; give one")
        return tune_mixed(req)
    if req.verify:
        require_gpu_for_verify()
    req = with_weights(req)
    source = resolve_profiles(req)
    inv = request_inventory(req)
    settings = Settings(req.budget_bytes, trials=req.trials, timeout_s=req.timeout_s, seed=req.seed,
                        between_trials=req.between_trials)
    result = search(inv, source.profiles, settings)
    from planner.host_ram import choose

    limit, limit_source = host_ram_limit(req, source)
    two = experts_spec(req.model_id) is not None
    host = choose(inv, source.profiles, result, req.budget_bytes, limit,
                  host_parts(req, source, inv, limit_source, two), experts=two)
    best, measured = host.scored, None
    if req.verify:
        best, measured = verify(inv, source, result, req, host)
    experts = None
    if two:
        plan, prediction, best, host, experts = place_experts(
            inv, source, result, req, host, best, keep_first=bool(req.verify)
        )
    else:
        on_disk = host.on_disk if best == host.scored else frozenset()
        plan, prediction = plan_of(inv, source, best, req.budget_bytes, on_disk, host.disk_floor_bytes)
    if host.host is not None:  # the plan file states its run's host peak (planner.host_peak)
        plan = dataclasses.replace(plan, predictions=dataclasses.replace(
            plan.predictions, host_peak_bytes=host.host.peak_bytes))
    from db.store import open_store

    with open_store(req.db_url) as store:
        plan_id = store.save_plan(plan)
    return TuneOutcome(plan, prediction, result, source, inv, plan_id, best, measured, host,
                       limit_source, experts=experts)
