"""Load a single-file transformer checkpoint into a model built from its diffusers config.

The file may use either naming `inspect_checkpoint` tells apart: diffusers module paths
(`transformer_blocks.N...`) or the original release's (BFL's `double_blocks.N.img_attn.qkv`,
with q, k and v fused), either possibly under ComfyUI's `model.diffusion_model.` prefix.
Original names go through diffusers' own converter. Tensors are read with safetensors (nothing
is unpickled) and put into the model with `assign=True`, so they keep the dtypes they are
stored in: an fp8 file loads as fp8 storage (matrices float8_e4m3fn, the rest bf16).

Every refusal is one `CheckpointError` naming the file, the first offending tensor and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from runtime.checkpoint.inspect import Naming, inspect_checkpoint
from runtime.checkpoint.load_quantized import assign, read_quantized_state, shape_of
from runtime.checkpoint.names import FIX as _FIX
from runtime.checkpoint.names import strip_prefix, to_diffusers
from runtime.errors import CheckpointError, UserError


def load_transformer(path: str | Path, config: Mapping[str, Any], family: str = "flux"):
    """The `family` transformer built from `config` (a diffusers config, `_`-keys allowed),
    holding the tensors of the safetensors file at `path` in their stored dtypes."""
    from runtime.families import get_family

    path = Path(path)
    if not path.is_file():
        raise UserError(f"transformer file {path} does not exist: give a .safetensors or .gguf file")
    report = inspect_checkpoint(path)  # checks the header and tells the naming apart
    if report.family != family:
        raise CheckpointError(
            f"transformer file {path} holds a {report.family} model, not {family}: {_FIX}"
        )
    if report.naming is Naming.MIXED:
        raise CheckpointError(
            f"transformer file {path} mixes diffusers and original tensor names: export it "
            f"again in one naming"
        )
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    model = _build_for_loading(family, config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if report.format.value != "safetensors":  # GGUF or NF4: kept packed
        state = read_quantized_state(path, report, family, shapes)
        _check(path, state, [], shapes)
        assign(model, state)
        return model.eval()
    state = _read(path)
    if report.naming is Naming.ORIGINAL:
        state, leftover = to_diffusers(family, state, shapes, path)
    else:  # diffusers names, bare or under ComfyUI's prefix (its Qwen-Image files)
        state, leftover = strip_prefix(state, path)[1], []
    _check(path, state, leftover, shapes)
    model.load_state_dict(_fresh(state), assign=True, strict=True)
    return model.eval()


def _build_for_loading(family: str, config: Mapping[str, Any]):
    """The architecture with its parameters on `meta` (the file fills them) and its buffers
    made on the CPU as the constructor makes them: a non-persistent buffer (Wan's rotary
    tables, Chroma's modulation projection) is in no checkpoint, so it must be computed, as
    diffusers' own loading keeps buffers (accelerate's init_empty_weights). Each parameter
    goes to `meta` as it is registered, before its initialiser runs, so nothing of its size is
    ever written."""
    import torch

    from runtime.families import get_family

    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = type(param)(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = on_meta
    try:
        return get_family(family).build(config, device="cpu")
    finally:
        torch.nn.Module.register_parameter = register


def _fresh(state: dict) -> dict:
    """Every tensor in its own new storage, same dtype, copied one at a time so the file's
    copy is freed as it goes. Then the numbers do not depend on the file's naming or layout
    (CPU kernels round differently for weights at other addresses mod 16), and no split
    part of a fused tensor keeps the whole of it alive."""
    return {name: state.pop(name).clone() for name in list(state)}


def _read(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(
            f"cannot read {path} as safetensors ({e}): give a .safetensors file"
        ) from e


def _check(path: Path, state: dict, leftover: list[str], shapes: dict) -> None:
    """Names and shapes against the model; `leftover` are file names no converter used."""
    missing = sorted(set(shapes) - set(state))
    if missing:
        raise CheckpointError(
            f"transformer file {path} lacks the tensor {missing[0]!r} (diffusers name): {_FIX}"
        )
    unexpected = leftover + sorted(set(state) - set(shapes))
    if unexpected:
        raise CheckpointError(
            f"transformer file {path} has the unknown tensor {unexpected[0]!r}: {_FIX}"
        )
    for name, shape in shapes.items():
        if shape_of(state[name]) != shape:
            raise CheckpointError(
                f"transformer file {path} stores {name!r} (diffusers name) with shape "
                f"{list(shape_of(state[name]))} but the model needs {list(shape)}: {_FIX}"
            )
