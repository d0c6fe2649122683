"""`planner tune --verify`: run the best predicted candidates on this machine's GPU, record each
run in the store, keep the fastest."""

from __future__ import annotations

from planner.app.placing import plan_of
from planner.app.request import ProfileSource, TuneRequest
from planner.search import Scored, SearchResult
from runtime.errors import UserError


def require_gpu_for_verify() -> None:
    import torch

    if not torch.cuda.is_available():
        raise UserError("--verify runs candidates on a CUDA GPU and this machine has none: drop --verify")


def verify(inv, source: ProfileSource, result: SearchResult, req: TuneRequest, host) -> tuple[Scored, float]:
    """Run the `req.verify` best predicted candidates through the runtime; keep the fastest."""
    import torch

    from db.store import open_store
    from planner.host_ram import Evaluator, pinned_bytes
    from runtime.catalog import get_model
    from runtime.families import get_family
    from runtime.random_weights import random_model

    ev = Evaluator(inv, source.profiles)
    ranked = sorted(
        (s for s in result.pareto if s.peak_vram_bytes <= result.room_bytes
         and pinned_bytes(ev, s.candidate) <= host.host_ram_bytes),
        key=lambda s: s.step_ms,
    )
    first = host.scored
    candidates = [first] + [s for s in ranked if s.candidate != first.candidate]
    gpu_name = torch.cuda.get_device_name(torch.cuda.current_device())
    adapter = get_family(get_model(req.model_id).family)
    model = random_model(req.model_id, req.storage_dtype, fill_device="cuda")  # seconds, not minutes
    measured = []
    with open_store(req.db_url) as store:
        for scored in candidates[: req.verify]:
            plan, _ = plan_of(inv, source, scored, req.budget_bytes)
            step_ms, peak = _measure(model, adapter, plan)
            store.record_run(store.save_plan(plan), step_ms, peak, "cuda", workload=plan.workload,
                             steps=3, gpu_name=gpu_name)
            measured.append((step_ms, scored))
    step_ms, scored = min(measured, key=lambda m: m[0])
    return scored, step_ms


def _measure(model, adapter, plan, steps: int = 3) -> tuple[float, int]:
    import torch

    from runtime.apply import apply_plan

    handle = apply_plan(model, plan, device="cuda")
    try:
        inputs = adapter.model_inputs(
            model, plan.workload, handle.device, plan.model.compute_dtype.torch()
        )
        torch.cuda.reset_peak_memory_stats(handle.device)
        with torch.inference_mode():
            model(**inputs)  # warm-up
            handle.enable_timing()
            for _ in range(steps * plan.workload.forwards_per_step):
                model(**inputs)
        times = handle.timings()
        per_step = sum(times[-plan.workload.forwards_per_step:])
        return per_step, int(torch.cuda.max_memory_allocated(handle.device))
    finally:
        handle.remove()
