"""A stored profile's calibration from the store's runs (`planner.calibration` computes it)."""

from __future__ import annotations

from planner.calibration import Calibration, calibrate
from runtime.errors import UserError


def load_calibration(db_url: str | None, profile, inventory=None) -> Calibration | None:
    """The calibration of a stored profile from the store's runs; None for a profile the store
    does not hold (a reference GPU's) or one of other blocks than `inventory`."""
    if profile.id is None or profile.is_estimate:
        return None
    from db.store import open_store

    with open_store(db_url) as store:
        runs = store.runs_of_profile(profile.id)
    if inventory is None:
        from runtime.inventory import inventory as inventory_of

        inventory = inventory_of(profile.model_id, profile.storage_dtype)
    try:
        return calibrate(profile, inventory, runs)
    except UserError:  # the profile does not describe these blocks: nothing to calibrate
        return None
