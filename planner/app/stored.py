"""This machine's profile of a model: the stored one, or measured and stored when there is none.

`planner profile` and `planner tune` (on a machine with a GPU) both go through here, so a
profile is measured once per machine, model, workload, dtype and tool version, and reused.
"""

from __future__ import annotations

from profiler.types import Profile
from runtime.dtypes import DType
from runtime.workload import Workload


def stored_or_measured(
    model_id: str,
    workload: Workload,
    storage: DType,
    device: str,
    db_url: str | None,
    *,
    fresh: bool = False,
    progress=None,
) -> tuple[Profile, bool]:
    """(profile, reused): the latest stored profile unless `fresh`, else a new measurement."""
    from db.store import open_store
    from profiler.machine import machine_facts
    from profiler.run import profile_model
    from runtime.version import TOOL_VERSION

    with open_store(db_url) as store:
        if not fresh:
            fingerprint = machine_facts(device).fingerprint
            found = store.latest_profile(fingerprint, model_id, workload, storage, TOOL_VERSION)
            if found is not None:
                return found, True
        profile = profile_model(model_id, workload, storage, device, progress)
        return profile.with_id(store.save_profile(profile)), False
