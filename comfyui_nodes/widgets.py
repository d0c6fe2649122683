"""What the nodes' inputs offer: dropdowns of catalog models, reference GPUs and plan files,
and a tooltip for every input. Computed when ComfyUI asks for the node list, not at import."""

from __future__ import annotations

import os

PLANS_FOLDER = "offload_plans"  # ComfyUI folder name: models/plans, and extra_model_paths.yaml
PLAN_EXTENSIONS = {".json"}
THIS_GPU = "this machine's GPU"
NO_PLAN_FILE = "(none)"
PLAN_DEFAULT = "as planned"
SEARCH_ALIASES = ["block swap", "lowvram", "offload", "cpu offload", "vram", "blockswap"]

TIPS = {
    "model": "The diffusion model to run under the offload plan (from a checkpoint or diffusion "
             "model loader, LoRAs applied or not).",
    "source": "Where the plan comes from: a plan file from the plans folder, a stored plan by "
              "its id, or the fastest stored plan of the catalog model that fits the VRAM "
              "budget on the GPU.",
    "plan_file": "A plan file (.json) in ComfyUI's models/plans folder.",
    "plan_id": "The id of a stored plan (the planner's plan list shows them).",
    "model_id": "The catalog model this diffusion model is.",
    "vram_gb": "The VRAM budget in GB that weights, ring slots and activations must fit in.",
    "gpu": "The GPU the plan is for: this machine's GPU, or a reference GPU to plan for one "
           "you do not have.",
    "width": "Image width in pixels the plan is for (0: any).",
    "height": "Image height in pixels the plan is for (0: any).",
    "keep_on_gpu": "Override: blocks to keep on the GPU, the rest streamed, e.g. "
                   "'double_blocks.0-9, single_blocks.0-4' (empty: as the plan places them).",
    "cast": "Override: where fp8 and quantized weights become the compute dtype: 'pre' on the "
            "host before the copy, 'auto' on the GPU just in time.",
    "prefetch_depth": "Override: how many streamed blocks are copied ahead of the one running "
                      "(0: as planned).",
    "trials": "How many candidate plans the search scores.",
    "measure_steps": "Steps run on this machine to measure the tuned plan (0: do not measure).",
    "host_ram_gb": "Host RAM in GB the streamed blocks may take (0: what the machine has free).",
    "run_host_ram_gb": "Host RAM in GB the whole run may use: streamed blocks, text encoders, VAE "
                       "and this process (0: what the machine has available).",
}


def tip(name: str) -> dict:
    return {"tooltip": TIPS[name]}


def register_plans_folder() -> str:
    """Register `models/plans` as ComfyUI's folder for plan files (idempotent)."""
    import folder_paths

    if PLANS_FOLDER not in folder_paths.folder_names_and_paths:
        path = os.path.join(folder_paths.models_dir, "plans")
        folder_paths.folder_names_and_paths[PLANS_FOLDER] = ([path], PLAN_EXTENSIONS)
    return PLANS_FOLDER


def plan_files() -> list[str]:
    import folder_paths

    return [NO_PLAN_FILE] + folder_paths.get_filename_list(register_plans_folder())


def plan_file_path(name: str) -> str | None:
    """The full path of a plan file chosen in the dropdown (None for none or unknown)."""
    import folder_paths

    if not name or name == NO_PLAN_FILE:
        return None
    return folder_paths.get_full_path(register_plans_folder(), name)


def catalog_models() -> list[str]:
    from runtime.catalog import all_models

    return list(all_models())


def reference_gpus() -> list[str]:
    from profiler.reference import reference_gpus as gpus

    return [THIS_GPU] + [spec.id for spec in gpus()]


def gpu_name(choice: str) -> str | None:
    """The GPU a dropdown choice names (None: this machine's)."""
    return None if not choice or choice == THIS_GPU else choice


def resolution(width: int, height: int) -> str | None:
    return f"{width}x{height}" if width > 0 and height > 0 else None


def vram(vram_gb: float) -> str:
    """A size the planner parses: 8.0 -> '8GB', 0.0005 -> '0.0005GB' (GB means GiB)."""
    return f"{vram_gb:.9f}".rstrip("0").rstrip(".") + "GB"
