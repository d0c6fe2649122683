"""`apply_plan`: run a model under an offload plan; the returned handle undoes it."""

from __future__ import annotations


def apply_plan(module_or_pipeline, plan, device=None):
    """Apply `plan` to a transformer (or a diffusers pipeline's `.transformer` or `.unet`). A
    pipeline with a second expert of the same architecture (Wan 2.2 A14B's `transformer_2`)
    runs each expert in turn under its placement (the plan's `experts`, else the plan's own),
    one on the device at a time (`runtime.engine.experts`). Given one transformer module, a
    plan with experts applies its first expert's placement.

    `device` is the compute device (default: CUDA when available, else CPU). The plan is
    checked against the model before anything is touched; a mismatch raises
    `PlanMismatchError` and leaves the model as it was. Applying the same plan again returns
    the same handle; a different plan is refused until `handle.remove()` is called.
    Returns an `OffloadHandle` (`stats`, `enable_timing()`, `timings()`, `remove()`).
    """
    import torch

    from runtime.engine.device import resolve_device
    from runtime.engine.experts import applied_experts, apply_experts
    from runtime.engine.handle import apply_module
    from runtime.errors import UserError
    from runtime.plan import FIRST_EXPERT, Plan

    if not isinstance(plan, Plan):
        raise UserError(
            f"plan must be a runtime.plan.Plan, got {type(plan).__name__}: load it with "
            f"runtime.plan.load_plan(path)"
        )
    experts = _experts_of(module_or_pipeline)
    _check_expert_attrs(module_or_pipeline, plan, experts)
    if experts:
        plans = {attr: plan.for_expert(attr) for attr in experts}
        existing = applied_experts(module_or_pipeline, plans, resolve_device(device))
        if existing is not None:
            return existing
        return apply_experts(module_or_pipeline, plans, device)
    plan = plan.for_expert(FIRST_EXPERT)
    model = denoiser_of(module_or_pipeline)
    return apply_module(model, plan, resolve_device(device))


def denoiser_of(module_or_pipeline):
    """The module a plan applies to: the module itself, or a diffusers pipeline's transformer
    (or unet); a `UserError` for anything else."""
    import torch

    from runtime.errors import UserError
    from runtime.families import denoiser_attributes

    model = module_or_pipeline
    if not isinstance(model, torch.nn.Module):  # a pipeline: its transformer (or unet)
        found = [getattr(model, name, None) for name in denoiser_attributes()]
        model = next((m for m in found if isinstance(m, torch.nn.Module)), model)
    if not isinstance(model, torch.nn.Module):
        raise UserError(
            f"cannot apply a plan to {type(module_or_pipeline).__name__}: pass a transformer "
            f"module or a diffusers pipeline that has one"
        )
    return model


def _check_expert_attrs(target, plan, experts: tuple[str, ...]) -> None:
    """A pipeline must have every expert the plan places; a lone module takes the first's."""
    import torch

    from runtime.errors import PlanMismatchError

    if isinstance(target, torch.nn.Module):
        return
    for e in plan.experts:
        if e.attr not in experts:
            raise PlanMismatchError(
                f"the plan places expert {e.attr!r} but this {type(target).__name__} has no "
                f"{e.attr}: load the model's full pipeline (both experts), or apply the plan "
                f"to its transformer alone"
            )


def _experts_of(pipeline) -> tuple[str, ...]:
    """The pipeline's transformer attributes when it has a second expert, else ()."""
    import torch

    attrs = ("transformer", "transformer_2")
    if all(isinstance(getattr(pipeline, a, None), torch.nn.Module) for a in attrs):
        return attrs
    return ()
