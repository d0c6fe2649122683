"""The store side of `apply_auto`: a first-step profile and its plan, saved and found again.

Profiles are found by the machine's fingerprint (the GPU), the `auto:` model id (class,
config and layout hash, input shapes: `planner.app.auto_keys`), the placeholder workload, the
storage dtype and the tool version, as `planner tune` finds its profiles; plans by that
profile and the exact VRAM budget. Plans of `auto:` ids are not catalog models: the store
keeps them as it keeps imported plans of unknown models (never returned by `plans best`).
"""

from __future__ import annotations

from db.store import open_store
from planner.app.auto_keys import AUTO_WORKLOAD
from profiler.machine import machine_facts
from runtime.dtypes import DType
from runtime.version import TOOL_VERSION


def stored_auto(url: str | None, model_id: str, storage: DType, device, budget_bytes: int):
    """(profile, plan or None) stored for this model id on this machine; None without a profile."""
    fingerprint = machine_facts(str(device)).fingerprint
    with open_store(url) as store:
        profile = store.latest_profile(fingerprint, model_id, AUTO_WORKLOAD, storage, TOOL_VERSION)
        if profile is None:
            return None
        plans = [
            p for p in store.list_plans(model=model_id)
            if p.plan.provenance.profile_id == profile.id
            and p.plan.target.vram_budget_bytes == budget_bytes
        ]
    return profile, max(plans, key=lambda p: p.id).plan if plans else None


def save_profile(url: str | None, profile):
    """`profile` stored, with its id."""
    with open_store(url) as store:
        return profile.with_id(store.save_profile(profile))


def save_plan(url: str | None, plan) -> int:
    with open_store(url) as store:
        return store.save_plan(plan, allow_unknown_model=True)
