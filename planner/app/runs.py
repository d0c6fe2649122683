"""Measured runs as the store keeps them: what ran (workload, steps), where (GPU or CPU), and
whether that is the plan's own workload on its target, the only runs that rank a plan."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RecordedRun:
    run_id: int | None  # None: not recorded (the store does not keep this plan)
    plan_id: int | None
    comparable: bool
    gpu_name: str
    note: str  # one sentence for the user


def device_name(device: str) -> str:
    """The GPU's name as the driver reports it for a CUDA device; "cpu" for the CPU."""
    if not str(device).startswith("cuda"):
        return "cpu"
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def run_workload(plan, height: int | None, width: int | None, frames: int | None = None):
    """The workload a run had: the plan's, with the image size (and frames) it was asked for."""
    return dataclasses.replace(plan.workload, height=height or plan.workload.height,
                               width=width or plan.workload.width,
                               frames=frames if frames is not None else plan.workload.frames)


def record_measured_run(db_url, plan, result, *, steps: int, height: int | None, width: int | None,
                        frames: int | None = None) -> RecordedRun:
    """Store the plan (if the store keeps it) and this run with its workload and device."""
    from db.plan_check import check_storable
    from db.store import open_store, run_is_comparable
    from runtime.errors import UserError

    gpu = device_name(result.device)
    workload = run_workload(plan, height, width, frames)
    comparable = run_is_comparable(plan, workload, gpu)
    try:
        check_storable(plan)
    except UserError as e:
        return RecordedRun(None, None, False, gpu, f"run not recorded: {e}")
    with open_store(db_url) as store:
        plan_id = store.save_plan(plan)
        run_id = store.record_run(
            plan_id, result.seconds_per_step * 1000.0, result.peak_vram_bytes or 0, result.device,
            workload=workload, steps=steps, gpu_name=gpu,
        )
    if comparable:
        note = f"recorded run {run_id} of plan {plan_id} (its workload on its target {plan.target.gpu_name})"
    else:
        why = (f"on {gpu}, not the plan's target {plan.target.gpu_name}"
               if workload == plan.workload else f"at {_size(workload)}, not the plan's {_size(plan.workload)}")
        note = f"recorded run {run_id} of plan {plan_id} as a run {why}: it does not rank the plan"
    return RecordedRun(run_id, plan_id, comparable, gpu, note)


def _size(workload) -> str:
    return workload.resolution + (f" x {workload.frames} frames" if workload.frames > 1 else "")


def record_run(db_url, plan, plan_id: int, step_ms: float, peak_vram_bytes: int, device: str,
               steps: int) -> None:
    """Store a measured run of stored plan `plan_id` with what ran (the plan's workload) and
    where (the GPU's name), so it ranks the plan only when it ran on the plan's target."""
    from db.store import open_store

    with open_store(db_url) as store:
        store.record_run(plan_id, step_ms, peak_vram_bytes, device,
                         workload=plan.workload, steps=steps, gpu_name=device_name(device))
