"""`plans import`: a plan file stored only once checked, with predictions this tool computed.

The figures inside a plan file are claims: a file saying 0.001 ms/step must not become
`plans best`. A catalog model's plan is checked as the store checks every plan
(db/plan_check.py), then its predictions (and each further expert's) are recomputed by the cost
model from its target GPU's reference profile, or from the stored profile the caller names."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from runtime.errors import UserError


@dataclasses.dataclass(frozen=True)
class Imported:
    plan_id: int
    model_id: str
    created: bool  # False: the same plan was stored already
    catalog_model: bool
    step_ms: float  # what the store keeps (recomputed for a catalog model)
    file_step_ms: float  # what the file claimed


def import_plan(path: Path, *, allow_unknown_model: bool = False, profile_id: int | None = None,
                db_url: str | None = None) -> Imported:
    from db.plan_check import check_storable
    from db.store import open_store
    from runtime.plan import load_plan

    plan = load_plan(path)
    known = check_storable(plan, allow_unknown_model=allow_unknown_model, source=str(path))
    claimed = plan.predictions.step_ms
    if known:
        plan = recomputed(plan, profile_id, db_url, str(path))
    with open_store(db_url) as store:
        existed = store.find_plan(plan)
        plan_id = existed if existed is not None else store.save_plan(plan, allow_unknown_model=allow_unknown_model)
    return Imported(plan_id, plan.model.id, existed is None, known, plan.predictions.step_ms, claimed)


def recomputed(plan, profile_id: int | None, db_url: str | None, source: str):
    """`plan` with predictions from stored profile `profile_id`, else from its target GPU's
    reference profile; refused where neither is a profile of its model on its target."""
    from planner.explain import recompute

    try:
        return recompute(plan, _profile(plan, profile_id, db_url))
    except UserError as e:
        raise UserError(
            f"{source}: its predictions cannot be recomputed here ({e}); the store ranks only figures "
            f"it computed: pass --profile ID, a stored profile of {plan.model.id} on {plan.target.gpu_name}"
        ) from None


def _profile(plan, profile_id: int | None, db_url: str | None):
    from profiler.gpus import same_gpu

    if profile_id is None:
        from profiler.reference import find_gpu, reference_profile

        spec = find_gpu(plan.target.gpu_name)
        return reference_profile(spec.id, plan.model.id, plan.workload, plan.model.storage_dtype)
    from db.store import open_store

    with open_store(db_url) as store:
        profile = store.get_profile(profile_id)
    if profile.model_id != plan.model.id or not same_gpu(profile.machine.gpu_name, plan.target.gpu_name):
        raise UserError(
            f"profile {profile_id} is of {profile.model_id} on {profile.machine.gpu_name}, the plan "
            f"for {plan.model.id} on {plan.target.gpu_name}"
        )
    return profile
