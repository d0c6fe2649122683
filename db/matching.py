"""Which stored plans answer a request, and which measured runs may rank a plan.

A plan answers a request for the same model, storage dtype, size, batch, text length and frames
(CFG on or off; how CFG is batched is the plan's own choice). A run ranks its plan only where it
ran the plan's own workload on the plan's target GPU ("cpu" for a CPU plan): a CPU run of a GPU
plan, or a run at another resolution, is kept as what it is and never makes the plan look fast.
"""

from __future__ import annotations

from profiler.gpus import normalize as normalize_gpu_name
from runtime.plan import Plan
from runtime.workload import Workload


def workload_matches(plan_workload: Workload, asked: Workload) -> bool:
    """Whether a plan made for `plan_workload` answers a request for `asked`: the same size,
    batch, text length and frames; CFG off matches only off, CFG on matches either batching
    (how CFG is batched is the plan's own choice)."""
    from runtime.workload import CfgMode

    same = (
        plan_workload.height == asked.height and plan_workload.width == asked.width
        and plan_workload.batch == asked.batch and plan_workload.text_tokens == asked.text_tokens
        and plan_workload.frames == asked.frames
    )
    return same and (plan_workload.cfg is CfgMode.NONE) == (asked.cfg is CfgMode.NONE)


def run_is_comparable(plan: Plan, workload: Workload | None, gpu_name: str | None) -> bool:
    """True for a run of the plan's own workload on the plan's target GPU ("cpu" for CPU)."""
    if workload is None or gpu_name is None:
        return False
    return workload == plan.workload and normalize_gpu_name(gpu_name) == normalize_gpu_name(plan.target.gpu_name)
