"""The ComfyUI nodes: "Offload plan: apply", "Offload plan: tune" and "Offload plan: auto".

Each takes a MODEL and returns a MODEL that carries the plan (a clone of the input patcher,
see `comfyui_nodes.patcher`), plus a line of text saying what was applied, also shown on the
node. None is an output node: an apply node whose MODEL goes nowhere does not run. Bad input
raises `UserError`; ComfyUI shows its one-sentence message on the node. The plan store is never
a widget (`comfyui_nodes.settings`).
"""

from __future__ import annotations

from . import widgets
from .sources import PlanSource
from .widgets import PLAN_DEFAULT, SEARCH_ALIASES, THIS_GPU, tip

CATEGORY = "offload-planner"
OUTPUT_TOOLTIPS = (
    "The model, run under the offload plan by every sampler it is connected to.",
    "What the plan does: blocks streamed, depth, predicted (and measured) seconds per step.",
)


def describe(plan, plan_id, measured_ms: float | None = None) -> str:
    """One line: which plan, how many blocks stream, predicted (and measured) s/step."""
    ident = f"plan {plan_id}" if plan_id is not None else "plan file"
    text = (
        f"{ident}: {plan.model.id} on {plan.target.gpu_name}, {len(plan.streamed)} of "
        f"{len(plan.blocks)} blocks streamed, depth {plan.prefetch_depth}, predicted "
        f"{plan.predictions.step_ms / 1000:.3f} s/step"
    )
    if measured_ms is not None:
        text += f", measured {measured_ms / 1000:.3f} s/step"
    return text


def _shown(clone, text: str) -> dict:
    return {"ui": {"text": [text]}, "result": (clone, text)}


def _model_inputs() -> dict:
    return {
        "model_id": (widgets.catalog_models(), {"default": "flux-dev", **tip("model_id")}),
        "vram_gb": ("FLOAT", {"default": 8.0, "min": 0.0001, "max": 1024.0, "step": 0.25,
                              "round": False, **tip("vram_gb")}),
        "gpu": (widgets.reference_gpus(), {"default": THIS_GPU, **tip("gpu")}),
    }


def _host_ram_input(name: str) -> tuple:
    return ("FLOAT", {"default": 0.0, "min": 0.0, "max": 4096.0, "step": 0.5, **tip(name)})


class _PlanNode:
    """What the three nodes declare alike: MODEL and plan text out, found as block swap."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "plan")
    OUTPUT_TOOLTIPS = OUTPUT_TOOLTIPS
    SEARCH_ALIASES = SEARCH_ALIASES


class OffloadPlanApply(_PlanNode):
    """MODEL in, MODEL out: the diffusion model runs under a stored or saved plan."""

    FUNCTION = "apply"
    DESCRIPTION = ("Run the diffusion model under an offload plan: some blocks stay on the GPU, "
                   "the rest stream from RAM while the others compute.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", tip("model")),
                "source": ([s.value for s in PlanSource],
                           {"default": PlanSource.BEST.value, **tip("source")}),
            },
            "optional": {
                "plan_file": (widgets.plan_files(), tip("plan_file")),
                "plan_id": ("INT", {"default": 1, "min": 1, "max": 2**31 - 1, **tip("plan_id")}),
                **_model_inputs(),
                "width": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8, **tip("width")}),
                "height": ("INT", {"default": 0, "min": 0, "max": 16384, "step": 8, **tip("height")}),
                "keep_on_gpu": ("STRING", {"default": "", **tip("keep_on_gpu")}),
                "cast": ([PLAN_DEFAULT, "pre", "auto"], {"default": PLAN_DEFAULT, **tip("cast")}),
                "prefetch_depth": ("INT", {"default": 0, "min": 0, "max": 16,
                                           **tip("prefetch_depth")}),
            },
        }

    def apply(self, model, source, plan_file="", plan_id=1, model_id="flux-dev", vram_gb=8.0,
              gpu=THIS_GPU, width=0, height=0, keep_on_gpu="", cast=PLAN_DEFAULT,
              prefetch_depth=0):
        from .overrides import Overrides, apply_overrides, describe_override
        from .patcher import FixedPlan, adopted_plan, attach
        from .settings import store_url
        from .sources import resolve

        plan, stored_id = resolve(
            source, plan_file, plan_id, model_id, widgets.vram(vram_gb), widgets.gpu_name(gpu),
            widgets.resolution(width, height), store_url(),
        )
        tuned = adopted_plan(model, plan)
        overrides = Overrides(keep_on_gpu, cast, prefetch_depth)
        used = apply_overrides(tuned, overrides)
        clone, _ = attach(model, FixedPlan(used))
        text = describe(tuned, stored_id)
        if overrides.any:
            text += "; " + describe_override(tuned, used)
        return _shown(clone, text)


class OffloadPlanTune(_PlanNode):
    """MODEL and a VRAM budget in: tune (or re-use a stored tune), apply, measure."""

    FUNCTION = "tune"
    DESCRIPTION = ("Tune an offload plan for this GPU and VRAM budget (or re-use the one stored "
                   "for the same model, budget and image size), apply it and time it.")

    @classmethod
    def INPUT_TYPES(cls):
        inputs = _model_inputs()
        return {
            "required": {
                "model": ("MODEL", tip("model")),
                "vram_gb": inputs["vram_gb"],
            },
            "optional": {
                "model_id": inputs["model_id"],
                "gpu": inputs["gpu"],
                "width": ("INT", {"default": 1024, "min": 64, "max": 16384, "step": 8,
                                  **tip("width")}),
                "height": ("INT", {"default": 1024, "min": 64, "max": 16384, "step": 8,
                                   **tip("height")}),
                "trials": ("INT", {"default": 200, "min": 1, "max": 100000, **tip("trials")}),
                "measure_steps": ("INT", {"default": 2, "min": 0, "max": 100,
                                          **tip("measure_steps")}),
                "host_ram_gb": _host_ram_input("run_host_ram_gb"),
            },
        }

    def tune(self, model, vram_gb, model_id="flux-dev", gpu=THIS_GPU, width=1024, height=1024,
             trials=200, measure_steps=2, host_ram_gb=0.0):
        from .patcher import attach_plan
        from .settings import store_url
        from .tune import measure, record, tune_for

        url = store_url()
        outcome = tune_for(model, model_id, widgets.vram(vram_gb),
                           widgets.resolution(width, height) or "", widgets.gpu_name(gpu) or "",
                           trials, url, widgets.vram(host_ram_gb) if host_ram_gb > 0 else "")
        clone, attachment = attach_plan(model, outcome.plan)
        measured_ms = None
        if measure_steps > 0:
            measured = measure(clone, attachment, measure_steps)
            record(outcome.plan, outcome.plan_id, measured, measure_steps, url)
            measured_ms = measured.step_ms
        text = describe(outcome.plan, outcome.plan_id, measured_ms)
        if outcome.reused:
            text += " (stored tune re-used)"
        return _shown(clone, text)


class OffloadPlanAuto(_PlanNode):
    """MODEL and a VRAM budget in, MODEL out: no model id, no plan file. The first sampling
    step measures the model on this machine, the search tunes a plan from it, and the rest of
    the run (and every later prompt) runs tuned; the plan is stored for the next time."""

    FUNCTION = "auto"
    DESCRIPTION = ("Offload any diffusion model within a VRAM budget: measured on its first "
                   "sampling step, then tuned. Needs no model id or plan file.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", tip("model")),
                "vram_gb": _model_inputs()["vram_gb"],
            },
            "optional": {
                "host_ram_gb": _host_ram_input("host_ram_gb"),
            },
        }

    def auto(self, model, vram_gb, host_ram_gb=0.0):
        from planner.budget import parse_size

        from .patcher import AutoPlan, attach, diffusion_model
        from .settings import store_url

        diffusion_model(model)  # a MODEL without one is refused here, not at sampling
        source = AutoPlan(
            vram_bytes=parse_size(widgets.vram(vram_gb), "vram_gb"),
            host_ram_bytes=parse_size(widgets.vram(host_ram_gb), "host_ram_gb") if host_ram_gb > 0 else None,
            store_url=store_url(),
        )
        clone, _ = attach(model, source)
        text = (f"auto: measured on the first sampling step, then tuned for "
                f"{widgets.vram(vram_gb)} of VRAM")
        return _shown(clone, text)


NODE_CLASS_MAPPINGS = {
    "OffloadPlanApply": OffloadPlanApply,
    "OffloadPlanTune": OffloadPlanTune,
    "OffloadPlanAuto": OffloadPlanAuto,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "OffloadPlanApply": "Offload plan: apply",
    "OffloadPlanTune": "Offload plan: tune",
    "OffloadPlanAuto": "Offload plan: auto",
}
