"""Profiles of any pipeline folder, measured on its own first step, and plans tuned from them.

`profile_folder(...)` runs one real denoising step of the folder's pipeline (latents out, no
decode) with every denoiser under `apply_auto` and a budget that holds it whole (the device's
memory; on the CPU the machine's RAM), so each denoiser's first forward is measured and
its profile stored under its `auto:` id; a second call finds it stored.

`tune_profile(profile_id, budget)` tunes a plan from such a stored profile for a budget, as
`apply_auto` does after the first step: the inventory is the profile's own blocks and bytes
(a module nobody catalogued has no meta-device build), the family the adapter's that builds
the module's class where one does (`auto` otherwise, as `apply_auto` decides). The plan is
stored, so `planner apply --weights FOLDER --vram` at that budget starts tuned.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from planner.app.any_pipeline import DENOISER, AnyRunConfig, run_any
from planner.app.auto import AutoConfig, tune_auto
from planner.app.auto_keys import AUTO_PREFIX
from planner.app.auto_store import save_plan
from runtime.discovery import AUTO_FAMILY
from runtime.errors import UserError
from runtime.inventory import BlockInfo, Inventory


@dataclasses.dataclass(frozen=True)
class FolderProfile:
    component: str
    profile: object  # profiler.types.Profile, stored
    reused: bool  # found stored, not measured in this run


def profile_folder(weights: Path, *, device: str | None, store_url: str | None,
                   height: int | None = None, width: int | None = None,
                   frames: int | None = None, image: Path | None = None,
                   prompt: str = "a photo of a cat",
                   call_args: tuple = ()) -> list[FolderProfile]:
    """One real step of the folder's pipeline, each denoiser's first forward measured."""
    budget = _whole_budget(device)
    result = run_any(AnyRunConfig(
        weights=Path(weights), prompt=prompt, output=Path("unused"), vram_bytes=budget,
        steps=1, height=height, width=width, frames=frames, image=image, device=device,
        store_url=store_url, output_type="latent", call_args=call_args,
    ))
    found = [c for c in result.components if c.role == DENOISER and c.profile is not None]
    if not found:
        raise UserError(f"no denoiser of {weights} was measured: its pipeline ran no step")
    return [FolderProfile(c.name, c.profile, c.source.startswith("stored")) for c in found]


def _whole_budget(device: str | None) -> int:
    """The device's memory: CUDA's, or the machine's RAM for the CPU."""
    import torch

    from profiler.machine import host_ram_bytes
    from runtime.engine.device import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        return int(torch.cuda.mem_get_info(resolved)[1])
    return host_ram_bytes()


def is_auto(model_id: str) -> bool:
    return model_id.startswith(AUTO_PREFIX)


def inventory_of_profile(profile) -> Inventory:
    """The inventory a first-step profile describes (see the module docstring)."""
    storage = profile.storage_dtype
    size = storage.element_size
    blocks = tuple(
        BlockInfo(b.name, b.kind, b.index, b.bytes // size, {storage.value: b.bytes})
        for b in profile.blocks
    )
    return Inventory(profile.model_id, family_of_auto_id(profile.model_id), storage, blocks,
                     profile.non_block_bytes // size, {storage.value: profile.non_block_bytes})


def family_of_auto_id(model_id: str) -> str:
    """The family whose adapter builds the class in an `auto:<class>:...` id, else `auto`."""
    from runtime.families import families, get_family

    cls = model_id.removeprefix(AUTO_PREFIX).split(":", 1)[0]
    for name in families():
        if getattr(get_family(name), "diffusers_model", None) == cls:
            return name
    return AUTO_FAMILY


def tune_profile(profile, budget_bytes: int, host_ram_bytes: int | None, store_url: str | None,
                 trials: int | None = None):
    """(plan, stored plan id) tuned from the stored first-step `profile` for `budget_bytes`."""
    import torch

    if not is_auto(profile.model_id):
        raise UserError(f"profile {profile.id} is of catalog model {profile.model_id}: tune it with --model")
    config = AutoConfig(budget_bytes, host_ram_bytes, torch.device("cpu"), store_url)
    if trials is not None:
        config = dataclasses.replace(config, trials=trials)
    plan = tune_auto(inventory_of_profile(profile), profile, config)
    return plan, save_plan(store_url, plan)
