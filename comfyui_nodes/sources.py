"""Where the apply node's plan comes from: a plan file, the store by id, or the store's best.

Each returns a `runtime.plan.Plan` and the store id it has there (None for a file that is not
stored); bad input raises `UserError` with one sentence naming the input and the fix.
"""

from __future__ import annotations

import enum


class PlanSource(str, enum.Enum):
    FILE = "plan file"
    STORE_ID = "stored plan id"
    BEST = "best stored plan"


def plan_from_file(name: str):
    from runtime.errors import UserError
    from runtime.plan import load_plan

    from .widgets import NO_PLAN_FILE, plan_file_path

    path = plan_file_path(name)
    if path is None:
        if not name or name == NO_PLAN_FILE:
            raise UserError("plan_file is not chosen: put a plan.json in ComfyUI's models/plans "
                            "folder and choose it, or choose another source")
        raise UserError(f"plan_file {name!r} is not in ComfyUI's models/plans folder: choose a "
                        f"file from the list")
    return load_plan(path), None


def plan_from_store(plan_id: int, db_url: str | None):
    from db.store import open_store
    from runtime.errors import UserError

    if plan_id < 1:
        raise UserError(f"plan_id {plan_id} is not a plan id: the planner's plan list shows the ids")
    with open_store(db_url) as store:
        stored = store.get_plan(plan_id)
    return stored.plan, stored.id


def best_plan(model_id: str, vram: str, gpu: str | None, resolution: str | None,
              db_url: str | None):
    """The fastest stored plan of `model_id` that fits `vram` on `gpu` (this machine's GPU when
    None) at `resolution` (any when None)."""
    from db.store import open_store
    from planner.budget import parse_size
    from runtime.errors import UserError

    budget = parse_size(vram, "vram")
    gpu_name = gpu or this_gpu_name()
    with open_store(db_url) as store:
        stored = store.best_plan(model_id, budget, gpu=gpu_name, resolution=resolution)
    if stored is None:
        raise UserError(
            f"no stored plan of {model_id} fits {vram} on {gpu_name}: tune one with the "
            f"'Offload plan: tune' node, or use the 'Offload plan: auto' node"
        )
    return stored.plan, stored.id


def this_gpu_name() -> str:
    import torch

    from runtime.errors import UserError

    if not torch.cuda.is_available():
        raise UserError("gpu is this machine's GPU but it has no CUDA GPU: choose the GPU the "
                        "plan is for")
    return torch.cuda.get_device_name(torch.cuda.current_device())


def resolve(source: str, plan_file: str, plan_id: int, model_id: str, vram: str,
            gpu: str | None, resolution: str | None, db_url: str | None):
    from runtime.errors import UserError

    try:
        kind = PlanSource(source)
    except ValueError:
        known = ", ".join(s.value for s in PlanSource)
        raise UserError(f"source {source!r} is not a plan source: choose one of {known}") from None
    if kind is PlanSource.FILE:
        return plan_from_file(plan_file)
    if kind is PlanSource.STORE_ID:
        return plan_from_store(plan_id, db_url)
    return best_plan(model_id.strip(), vram, gpu, resolution, db_url)
