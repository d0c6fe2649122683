"""The two ComfyUI nodes: "Offload plan: apply" and "Offload plan: tune".

Both take a MODEL and return a MODEL that carries the plan (a clone of the input patcher, see
`comfyui_nodes.patcher`), plus a line of text saying what was applied. Bad input raises
`UserError`; ComfyUI shows its one-sentence message on the node.
"""

from __future__ import annotations

from .sources import PlanSource

CATEGORY = "offload-planner"


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


class OffloadPlanApply:
    """MODEL in, MODEL out: the diffusion model runs under a stored or saved plan."""

    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "plan")
    OUTPUT_NODE = True
    DESCRIPTION = "Run the diffusion model under an offload plan: resident and streamed blocks."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "source": ([s.value for s in PlanSource], {"default": PlanSource.BEST.value}),
            },
            "optional": {
                "plan_file": ("STRING", {"default": ""}),
                "plan_id": ("INT", {"default": 1, "min": 1, "max": 2**31 - 1}),
                "model_id": ("STRING", {"default": "flux-dev"}),
                "vram": ("STRING", {"default": "8GB"}),
                "gpu": ("STRING", {"default": ""}),
                "resolution": ("STRING", {"default": ""}),
                "db_url": ("STRING", {"default": ""}),
            },
        }

    def apply(self, model, source, plan_file="", plan_id=1, model_id="flux-dev", vram="8GB",
              gpu="", resolution="", db_url=""):
        from .patcher import attach_plan
        from .sources import resolve

        plan, stored_id = resolve(source, plan_file, plan_id, model_id, vram, gpu, resolution, db_url)
        clone, _ = attach_plan(model, plan)
        text = describe(plan, stored_id)
        return {"ui": {"text": [text]}, "result": (clone, text)}


class OffloadPlanTune:
    """MODEL and a VRAM budget in: profile this GPU if needed, tune, apply, measure."""

    CATEGORY = CATEGORY
    FUNCTION = "tune"
    RETURN_TYPES = ("MODEL", "STRING")
    RETURN_NAMES = ("model", "plan")
    OUTPUT_NODE = True
    DESCRIPTION = "Tune an offload plan for this GPU and VRAM budget, apply it and time it."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "vram": ("STRING", {"default": "8GB"}),
            },
            "optional": {
                "model_id": ("STRING", {"default": "flux-dev"}),
                "resolution": ("STRING", {"default": "1024x1024"}),
                "gpu": ("STRING", {"default": ""}),
                "trials": ("INT", {"default": 200, "min": 1, "max": 100000}),
                "measure_steps": ("INT", {"default": 2, "min": 0, "max": 100}),
                "db_url": ("STRING", {"default": ""}),
                # host RAM the whole run may use, e.g. 32GB; empty: what this machine has available
                "host_ram": ("STRING", {"default": ""}),
            },
        }

    def tune(self, model, vram, model_id="flux-dev", resolution="1024x1024", gpu="", trials=200,
             measure_steps=2, db_url="", host_ram=""):
        from .patcher import attach_plan
        from .tune import measure, record, tune_for

        url = db_url.strip() or None
        outcome = tune_for(model, model_id.strip(), vram, resolution, gpu, trials, url, host_ram)
        clone, attachment = attach_plan(model, outcome.plan)
        measured_ms = None
        if measure_steps > 0:
            measured = measure(clone, attachment, measure_steps)
            record(outcome.plan, outcome.plan_id, measured, measure_steps, url)
            measured_ms = measured.step_ms
        text = describe(outcome.plan, outcome.plan_id, measured_ms)
        return {"ui": {"text": [text]}, "result": (clone, text)}


NODE_CLASS_MAPPINGS = {
    "OffloadPlanApply": OffloadPlanApply,
    "OffloadPlanTune": OffloadPlanTune,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "OffloadPlanApply": "Offload plan: apply",
    "OffloadPlanTune": "Offload plan: tune",
}
