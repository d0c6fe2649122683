"""Registry of model family adapters, keyed by name.

Adding a family is one new module here plus one line in `_BUILTIN`; the module's adapter
lists the family's catalog models too.
"""

from __future__ import annotations

import dataclasses
import importlib

from runtime.errors import UserError
from runtime.families.base import FamilyAdapter

_REGISTRY: dict[str, FamilyAdapter] = {}
_BUILTIN = {
    "flux": "runtime.families.flux:FluxAdapter",
    "flux2": "runtime.families.flux2:Flux2Adapter",
    "chroma": "runtime.families.chroma:ChromaAdapter",
    "sd3": "runtime.families.sd3:SD3Adapter",
    "z-image": "runtime.families.z_image:ZImageAdapter",
    "qwen-image": "runtime.families.qwen_image:QwenImageAdapter",
    "hunyuan-image": "runtime.families.hunyuan_image:HunyuanImageAdapter",
    "unet": "runtime.families.unet:UNetAdapter",
    "wan": "runtime.families.wan:WanAdapter",
    "ltx-video": "runtime.families.ltx_video:LTXVideoAdapter",
    "hunyuan-video": "runtime.families.hunyuan_video:HunyuanVideoAdapter",
    "comfy-flux": "runtime.families.comfy_flux:ComfyFluxAdapter",
}


def register(adapter: FamilyAdapter) -> FamilyAdapter:
    if adapter.name in _REGISTRY and type(_REGISTRY[adapter.name]) is not type(adapter):
        raise ValueError(f"family {adapter.name!r} is registered twice")
    _REGISTRY[adapter.name] = adapter
    return adapter


def _load_builtins() -> None:
    for name, target in _BUILTIN.items():
        if name not in _REGISTRY:
            module_name, class_name = target.split(":")
            register(getattr(importlib.import_module(module_name), class_name)())


def get_family(name: str) -> FamilyAdapter:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UserError(f"unknown model family {name!r}: known families are {known}") from None


def family_of_module(module) -> FamilyAdapter:
    """The adapter that recognises `module` (a transformer, not a pipeline)."""
    _load_builtins()
    for adapter in _REGISTRY.values():
        if adapter.recognises(module):
            return adapter
    raise UserError(
        f"no model family recognises {type(module).__name__}: "
        f"supported families are {', '.join(sorted(_REGISTRY))}"
    )


def denoiser_attributes() -> list[str]:
    """The pipeline attributes (and subfolders) that hold a family's model, e.g. `transformer`."""
    _load_builtins()
    return list(dict.fromkeys(adapter.denoiser for adapter in _REGISTRY.values()))


def families() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def family_models() -> list:
    """Every registered family's catalog entries (`runtime.catalog` collects them)."""
    _load_builtins()
    return [
        dataclasses.replace(spec, family_check=adapter.check_workload)
        for adapter in _REGISTRY.values() for spec in adapter.models()
    ]
