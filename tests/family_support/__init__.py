"""Per-family test support: how to build each family's tiny pipeline and write its checkpoints
in the original naming. `tests/test_family_contract.py` runs the same tests over every family
through these modules, so a new family adds one module here plus one line in `_MODULES`.

A support module provides:
- `TINY_MODELS`: the catalog ids of the family's tiny models (each `tiny-*`);
- `build_tiny_pipeline(model_id, seed=0)`: a real diffusers pipeline built from small configs
  (nothing downloaded) whose transformer has exactly the catalog config of `model_id`, fp32 on
  CPU, with tiny text encoders and tokenizers, a tiny VAE, a scheduler;
- `to_original(state)`: a diffusers-named state dict of the transformer in the family's
  original single-file naming (what ComfyUI loads), or None where the family has none;
- `APPLY_SIZE`: (width, height) a tiny `planner apply` renders at (and `APPLY_FRAMES`, 1 for
  image models).
"""

from __future__ import annotations

import importlib

_MODULES = {
    "flux": "tests.family_support.flux",
    "flux2": "tests.family_support.flux2",
    "chroma": "tests.family_support.chroma",
    "sd3": "tests.family_support.sd3",
    "z-image": "tests.family_support.z_image",
    "qwen-image": "tests.family_support.qwen_image",
    "hunyuan-image": "tests.family_support.hunyuan_image",
    "unet": "tests.family_support.unet",
    "wan": "tests.family_support.wan",
    "ltx-video": "tests.family_support.ltx_video",
    "hunyuan-video": "tests.family_support.hunyuan_video",
}


# Registered families the contract suite cannot build on its own, and where they are tested.
WITHOUT_SUPPORT = {
    "comfy-flux": "ComfyUI's own FLUX module, no catalog models: tests/test_comfyui_flux.py "
                  "(under ComfyUI) and tests/test_comfyui_adapter.py",
}


def supported_families() -> list[str]:
    return list(_MODULES)


def support(family: str):
    return importlib.import_module(_MODULES[family])


def tiny_models() -> list[tuple[str, str]]:
    """(family, tiny model id) for every family with test support."""
    return [(family, model) for family in _MODULES for model in support(family).TINY_MODELS]
