"""Each denoiser's phase of an any-pipeline run, recorded in the store against the plan that
`apply_auto` had in force at its end (stored under the module's `auto:` id, its input
shapes in the id and the placeholder workload, as `planner.app.auto_store` keeps it)."""

from __future__ import annotations

from planner.app.runs import RecordedRun, device_name


def record_component_runs(db_url, result) -> list[RecordedRun]:
    """A measured run per streamed denoiser of `result` (`AnyRunResult`): its forwards' time
    per step, its phase's peak, the device."""
    from db.store import open_store, run_is_comparable

    streamed = [c for c in result.components if c.role == "denoiser" and c.plan is not None]
    if not streamed:
        return []
    recorded = []
    gpu = device_name(result.device)
    with open_store(db_url) as store:
        for c in streamed:
            plan_id = store.save_plan(c.plan, allow_unknown_model=True)  # as planner.app.auto_store
            step_ms = c.total_ms / result.steps if result.steps else 0.0
            run_id = store.record_run(
                plan_id, step_ms, c.peak_vram_bytes or 0, result.device,
                workload=c.plan.workload, steps=result.steps, gpu_name=gpu,
            )
            comparable = run_is_comparable(c.plan, c.plan.workload, gpu)
            recorded.append(RecordedRun(
                run_id, plan_id, comparable, gpu,
                f"recorded run {run_id} of {c.name}'s plan {plan_id} ({c.plan.model.id})",
            ))
    return recorded
