"""What a first-step profile and its plan are stored under: the model, its inputs, the GPU.

A module nobody catalogued has no model id, so `auto_model_id` makes one from what decides
its blocks' bytes and timings: the module's class, a hash of its config (diffusers'
`config`, transformers' `config.to_dict()`, any mapping; nothing where there is none, e.g.
ComfyUI's `diffusion_model`) and of its tensor layout (every parameter's and buffer's name,
shape and dtype), and a hash of the first forward's inputs (tensor shapes and dtypes, and the
flags that steer a forward: bools, strings, None; numbers such as a timestep are left out, as
they change every step). The GPU is the store's machine fingerprint, beside the id.

Workloads (resolution, frames, text tokens) describe catalog models; for these ids the input
shapes take their place, and every profile and plan carries `AUTO_WORKLOAD` as a placeholder.
"""

from __future__ import annotations

import hashlib
import json
from typing import Mapping

import torch

from runtime.dtypes import DType, storage_dtype
from runtime.errors import UserError
from runtime.workload import Workload

AUTO_PREFIX = "auto:"
AUTO_WORKLOAD = Workload(height=16, width=16, batch=1, text_tokens=1)  # inputs are in the id
_MAX_CLASS_CHARS = 60  # the store keeps model ids in 128 characters


def auto_model_id(model: torch.nn.Module, args: tuple, kwargs: Mapping) -> str:
    """`auto:<class>:<config and layout hash>:<inputs hash>` (see the module docstring)."""
    name = type(model).__name__[:_MAX_CLASS_CHARS]
    return f"{AUTO_PREFIX}{name}:{architecture_hash(model)[:16]}:{inputs_hash(args, kwargs)[:12]}"


def architecture_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}\n".encode())
    h.update(json.dumps(_config_of(model), sort_keys=True, default=str).encode())
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(f"\n{name}:{tuple(t.shape)}:{t.dtype}".encode())
    return h.hexdigest()


def _config_of(model) -> dict:
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):  # transformers PretrainedConfig
        config = config.to_dict()
    if isinstance(config, Mapping):  # diffusers FrozenDict, a plain dict
        return {str(k): v for k, v in config.items() if not str(k).startswith("_")}
    return {}


def inputs_hash(args: tuple, kwargs: Mapping) -> str:
    parts = [_describe(a) for a in args] + [f"{k}={_describe(v)}" for k, v in sorted(kwargs.items())]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}:{value.dtype}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_describe(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: str(kv[0]))  # never str() a tensor value
        return "{" + ",".join(f"{k}:{_describe(v)}" for k, v in items) + "}"
    if value is None or isinstance(value, (bool, str)):
        return repr(value)
    return type(value).__name__


def storage_of(model: torch.nn.Module, adapter) -> DType:
    """The storage dtype of the model's blocks: the one under which every floating block
    tensor has the dtype `runtime.dtypes.storage_dtype` gives it (fp32 throughout; fp8
    matrices beside bf16 vectors is fp8, and so is fp8 throughout, as ComfyUI's fp8
    `weight_dtype` stores a model). The non-block modules may keep dtypes of their own
    where the adapter allows it (`free_non_block_dtypes`, discovered blocks). A `UserError`
    for blocks no storage dtype describes (plans count bytes by one storage dtype)."""
    if getattr(adapter, "free_non_block_dtypes", False):
        modules = [block for _, _, block in adapter.blocks(model)]
    else:
        modules = [model]
    tensors = [t for m in modules for t in list(m.parameters()) + list(m.buffers())
               if t.is_floating_point()]
    found = {t.dtype for t in tensors}
    for dtype in sorted(found, key=lambda d: torch.finfo(d).bits):  # fp8 before bf16 before fp32
        try:
            storage = DType.from_torch(dtype)
        except ValueError:
            continue
        if all(storage_dtype(storage, tuple(t.shape)).torch() == t.dtype for t in tensors):
            return storage
        if storage.is_fp8 and all(t.dtype == dtype for t in tensors):
            return storage  # ComfyUI's fp8 weight_dtype: vectors in fp8 too, counted as stored
    shown = ", ".join(sorted(str(d).removeprefix("torch.") for d in found)) or "none"
    raise UserError(
        f"{type(model).__name__} stores its blocks' floating tensors as {shown}, which no "
        f"storage dtype describes: cast the model with model.to(torch.bfloat16) (or its own "
        f"dtype) first"
    )
