"""The profile(s) a tune plans from (--gpu, --profile, this machine's GPU) and the inventory and
host RAM limit it plans for."""

from __future__ import annotations

import dataclasses

from planner.app.request import ProfileSource, TuneRequest, cfg_modes
from planner.budget import format_size
from runtime.errors import UserError


def resolve_profiles(req: TuneRequest) -> ProfileSource:
    """The profile(s) to plan from: --gpu, --profile, this machine's GPU, or a clear refusal."""
    if req.gpu is not None:
        from profiler.reference import find_gpu, reference_profile

        spec = find_gpu(req.gpu)
        if req.budget_bytes > spec.memory_bytes:
            raise UserError(
                f"--vram {format_size(req.budget_bytes)} is more than the {spec.id}'s "
                f"{format_size(spec.memory_bytes)}: give at most that, or the --gpu you plan for"
            )
        inv = request_inventory(req) if req.weights is not None else None
        profiles = {
            cfg: reference_profile(spec.id, req.model_id, dataclasses.replace(req.workload, cfg=cfg),
                                   req.storage_dtype, inventory=inv)
            for cfg in cfg_modes(req.workload)
        }
        return ProfileSource(profiles, spec.id, None, True)
    if req.profile_id is not None:
        from db.store import open_store

        with open_store(req.db_url) as store:
            profile = store.get_profile(req.profile_id)
        if profile.model_id != req.model_id:
            raise UserError(
                f"profile {req.profile_id} is of {profile.model_id}, not {req.model_id}: "
                f"pass --model {profile.model_id} or a profile of {req.model_id}"
            )
        if not req.workload_from_profile:
            _check_profile_workload(req, profile)
        source = ProfileSource({profile.workload.cfg: profile}, profile.machine.gpu_name, profile.id, False)
    else:
        source = _this_machine(req)
    from planner.app.calibration import load_calibration

    profile = next(iter(source.profiles.values()))
    return dataclasses.replace(source, calibration=load_calibration(req.db_url, profile, request_inventory(req)))


def _check_profile_workload(req: TuneRequest, profile) -> None:
    """A profile's timings hold for the workload it was measured at, not for another one."""
    have, want = profile.workload, req.workload
    for name, shown in (("resolution", "--resolution"), ("batch", "--batch"), ("text_tokens", None),
                        ("frames", None)):
        a, b = getattr(have, name, 1), getattr(want, name, 1)
        if a == b:
            continue
        option = f"{shown} {a}" if shown else f"a request with {name} {a}"
        raise UserError(
            f"profile {profile.id} was measured at {name} {a}, not {b}: pass {option} (or leave it "
            f"out to use the profile's), or measure one with `planner profile --model {req.model_id} "
            f"--resolution {want.resolution} --batch {want.batch}`"
        )


AVAILABLE_HERE = "available on this machine (MemAvailable and the cgroup)"


def host_ram_limit(req: TuneRequest, source: ProfileSource) -> tuple[int, str]:
    """Host RAM the whole run may hold: --host-ram, else what this machine has available now
    (MemAvailable and the cgroup's room), the profiled machine's RAM, or the stated default
    for a reference GPU."""
    from planner.host_ram import REFERENCE_HOST_RAM_BYTES

    if req.host_ram_bytes is not None:
        return req.host_ram_bytes, "--host-ram"
    if source.reference:
        return REFERENCE_HOST_RAM_BYTES, "reference default (--host-ram to change)"
    profile = next(iter(source.profiles.values()))
    if req.profile_id is not None:
        return profile.machine.host_ram_bytes, f"RAM of the machine profile {req.profile_id} was measured on"
    from runtime.engine.host_memory import available_host_bytes

    return min(available_host_bytes(), profile.machine.host_ram_bytes or available_host_bytes()), \
        AVAILABLE_HERE


def host_parts(req: TuneRequest, source: ProfileSource, inventory, limit_source: str, experts: bool):
    """What the run holds beside the streamed packs (planner.host_peak): the baseline (the
    process alone where the limit is what this machine has available now, else the OS too),
    the pipeline's text encoders and VAE, and a parked expert."""
    from planner.host_peak import PROCESS_BASELINE_BYTES, HostParts, stated_baseline
    from runtime.pipeline_parts import parts_bytes

    profile = next(iter(source.profiles.values()))
    measured = None if source.reference else profile.host_baseline_bytes
    process = measured or PROCESS_BASELINE_BYTES
    if limit_source == AVAILABLE_HERE:
        baseline, said = process, "this process, " + ("measured" if measured else "stated")
    else:
        baseline, said = stated_baseline(measured)
    text, vae = parts_bytes(req.model_id)
    return HostParts(baseline, text, vae, parked_expert_bytes=inventory.total_bytes if experts else 0,
                     baseline_source=said)


def _this_machine(req: TuneRequest) -> ProfileSource:
    import torch

    if not torch.cuda.is_available():
        from profiler.reference import reference_gpus

        ids = ", ".join(spec.id for spec in reference_gpus())
        raise UserError(
            f"no GPU on this machine and no profile given: pass --gpu NAME (one of {ids}) "
            f"or --profile ID (a stored profile: `planner profiles list` shows them)"
        )
    from planner.app.stored import stored_or_measured

    device = f"cuda:{torch.cuda.current_device()}"
    profile, _ = stored_or_measured(
        req.model_id, req.workload, req.storage_dtype, device, req.db_url, fresh=req.fresh
    )
    return ProfileSource({profile.workload.cfg: profile}, profile.machine.gpu_name, profile.id, False)

def request_inventory(req: TuneRequest):
    """The inventory `req` plans for: the checkpoint's exact bytes, or the catalog model's."""
    from runtime.inventory import inventory, inventory_of_checkpoint

    if req.weights is not None:
        return inventory_of_checkpoint(req.model_id, req.weights)
    return inventory(req.model_id, req.storage_dtype)


def with_weights(req: TuneRequest) -> TuneRequest:
    """`req` with the storage dtype of its checkpoint, where it names one."""
    if req.weights is None:
        return req
    return dataclasses.replace(req, storage_dtype=request_inventory(req).storage_dtype)


def profile_for_plan(plan, gpu: str | None, profile_id: int | None, db: str | None):
    """--profile, else --gpu, else the plan's stored profile, else its target's reference."""
    if gpu is not None and profile_id is not None:
        raise UserError("--gpu and --profile both name a profile: give one of them")
    profile_id = profile_id if profile_id is not None or gpu is not None else plan.provenance.profile_id
    if profile_id is not None:
        from db.store import open_store

        with open_store(db) as store:
            return store.get_profile(profile_id)
    from profiler.reference import find_gpu, reference_profile

    name = gpu or plan.target.gpu_name
    try:
        spec = find_gpu(name)
    except UserError:
        raise UserError(
            f"the plan's target {name!r} is not a reference GPU and the plan names no stored profile: "
            f"pass --gpu NAME or --profile ID"
        ) from None
    return reference_profile(spec.id, plan.model.id, plan.workload, plan.model.storage_dtype)
