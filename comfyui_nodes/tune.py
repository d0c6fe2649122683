"""The tune node as a library: tune a plan for a ComfyUI model, apply it, measure it there.

`tune_for` runs `planner.app.tune.tune` for the catalog model the ComfyUI model is (its storage
dtype read from the module), so the plan is stored like any other. `measure` loads the planned
patcher through ComfyUI's own `load_models_gpu` and times whole forwards of the real module at
the plan's workload; the measured step time is recorded in the store against the plan.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Tuned:
    plan: object  # runtime.plan.Plan
    plan_id: int
    reused: bool  # a plan stored for the same model, budget, workload and GPU, not re-tuned


@dataclasses.dataclass(frozen=True)
class Measured:
    step_ms: float
    peak_vram_bytes: int
    device: str


def storage_dtype_of(patcher):
    """The dtype ComfyUI stores the diffusion model's block weights in, as a plan names it."""
    from .patcher import diffusion_model, fp8_vector
    from runtime.dtypes import DType
    from runtime.errors import UserError

    module = diffusion_model(patcher)
    vector = fp8_vector(module)
    if vector is not None:
        raise UserError(
            f"ComfyUI loaded this model with its biases and norms in fp8 too ({vector}), which "
            f"the catalog's fp8 model keeps in bf16, so it cannot be tuned as a catalog model: "
            f"use the 'Offload plan: auto' node, or load it with weight_dtype 'default'"
        )
    dtypes = {p.dtype for p in module.parameters() if p.dim() >= 2}
    if len(dtypes) != 1:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        raise UserError(
            f"the model's weights mix dtypes ({names}): load it with one weight_dtype, then tune"
        )
    return DType.from_torch(dtypes.pop())


def check_model_is(patcher, model_id: str, storage) -> None:
    """Refuse, before any tuning, a MODEL whose blocks are not those of catalog `model_id`."""
    from .patcher import diffusion_model
    from runtime.errors import UserError
    from runtime.families import family_of_module
    from runtime.inventory import inventory, inventory_of_module

    module = diffusion_model(patcher)
    ours = inventory_of_module(module, family_of_module(module), model_id, storage)
    theirs = inventory(model_id, storage)
    if [(b.kind, b.bytes) for b in ours.blocks] != [(b.kind, b.bytes) for b in theirs.blocks]:
        raise UserError(
            f"the MODEL is not {model_id}: its {len(ours.blocks)} blocks hold "
            f"{ours.block_bytes} bytes in {storage.value}, {model_id}'s {len(theirs.blocks)} "
            f"hold {theirs.block_bytes}; set model_id to the catalog model it is "
            f"(planner models list)"
        )


def tune_for(patcher, model_id: str, vram: str, resolution: str, gpu: str, trials: int,
             db_url: str | None, host_ram: str = "") -> Tuned:
    """The plan stored for this model, budget, workload and GPU, else a new tune of it
    (profiling this GPU first when no profile is stored)."""
    from planner.budget import parse_size
    from planner.app.request import TuneRequest
    from planner.app.tune import tune
    from runtime.catalog import get_model

    spec = get_model(model_id)
    storage = storage_dtype_of(patcher)
    check_model_is(patcher, spec.id, storage)
    request = TuneRequest(
        model_id=spec.id,
        budget_bytes=parse_size(vram, "vram"),
        workload=spec.workload(resolution.strip() or None),
        storage_dtype=storage,
        gpu=gpu.strip() or None,
        trials=trials,
        db_url=db_url,
        host_ram_bytes=parse_size(host_ram, "host_ram") if host_ram.strip() else None,
    )
    stored = stored_tune(request)
    if stored is not None:
        return Tuned(stored.plan, stored.id, reused=True)
    outcome = tune(request)
    return Tuned(outcome.plan, outcome.plan_id, reused=False)


def stored_tune(request):
    """The newest stored plan tuned for exactly this request's model, storage, budget,
    workload and GPU (a reference GPU by its id, else this machine's GPU), or None."""
    from db.store import open_store

    from .sources import this_gpu_name

    gpu = request.gpu
    if gpu is None:
        try:
            gpu = this_gpu_name()
        except Exception:  # no GPU here: tune says so in its own words
            return None
    with open_store(request.db_url) as store:
        plans = store.list_plans(
            model=request.model_id, gpu=gpu, max_vram=request.budget_bytes,
            storage_dtype=request.storage_dtype, workload=request.workload,
        )
    same = [p for p in plans if p.plan.target.vram_budget_bytes == request.budget_bytes]
    return max(same, key=lambda p: p.id, default=None)


def measure(patcher, attachment, steps: int) -> Measured:
    """Load `patcher` the way the sampler does and time `steps` steps of its diffusion model
    under the plan (applied and removed around the measurement, as around a sampling run)."""
    import comfy.model_management as mm
    import torch

    from .patcher import diffusion_model
    from runtime.families import family_of_module

    mm.load_models_gpu([patcher])
    module = diffusion_model(patcher)
    plan = attachment.plan
    forwards = plan.workload.forwards_per_step
    with attachment.running(patcher) as handle, torch.inference_mode():
        inputs = family_of_module(module).model_inputs(
            module, plan.workload, handle.device, plan.model.compute_dtype.torch()
        )
        cuda = handle.device.type == "cuda"
        module(**inputs)  # warm-up: the ring's first turn, kernels chosen
        if cuda:
            torch.cuda.reset_peak_memory_stats(handle.device)
        handle.enable_timing()
        for _ in range(steps * forwards):
            module(**inputs)
        times = handle.timings()
        peak = int(torch.cuda.max_memory_allocated(handle.device)) if cuda else 0
        device = str(handle.device)
    return Measured(sum(times) / steps, peak, device)


def record(plan, plan_id: int, measured: Measured, steps: int, db_url: str | None) -> None:
    """Store the measured run with what ran (the plan's workload) and where (the GPU's name),
    so it ranks the plan only when it ran on the plan's target."""
    from planner.app.runs import record_run

    record_run(db_url, plan, plan_id, measured.step_ms, measured.peak_vram_bytes, measured.device, steps)
