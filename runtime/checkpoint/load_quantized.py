"""Load a quantized single-file transformer (GGUF, bitsandbytes NF4) keeping it packed.

Quantized matrices become packed uint8 parameters carrying a `QuantInfo`
(`runtime.engine.quantized`); everything else keeps the dtype the file stores. The engine
dequantizes on use (`auto`) or on the host ahead of time (`pre`); `dequantize_model` does it
for a whole model, which is the plain model the offloaded one is compared with.

GGUF files may use the original names (BFL's `double_blocks.N`, as city96's files do, possibly
under ComfyUI's prefix): the packed tensors go through the family's converter as diffusers'
`GGUFParameter`s, which keep their quant type through its splits and concatenations (GGUF
quantizes whole rows, so row splits of packed bytes are exact). NF4 files are read in
diffusers names, as diffusers and transformers save them.
"""

from __future__ import annotations

from pathlib import Path

from runtime.checkpoint.names import FIX as _FIX
from runtime.checkpoint.names import to_diffusers
from runtime.dtypes import DType
from runtime.errors import CheckpointError


def read_quantized_state(path: Path, report, family: str, shapes: dict) -> dict:
    """Tensors by diffusers name: packed quantized parameters and plain tensors."""
    from runtime.checkpoint.inspect import Naming
    from runtime.checkpoint.stored import FileFormat

    if report.format is FileFormat.GGUF:
        state = _read_gguf(path)
        if report.naming is Naming.ORIGINAL:
            state, leftover = to_diffusers(family, state, shapes, path)
            if leftover:
                raise CheckpointError(f"transformer file {path} has the unknown tensor {leftover[0]!r}: {_FIX}")
        return {name: _from_gguf(name, t, path) for name, t in state.items()}
    if report.naming is not Naming.DIFFUSERS:
        raise CheckpointError(
            f"NF4 file {path} uses the original {family} tensor names, which cannot be split "
            f"while packed: save the NF4 model with diffusers (save_pretrained) and give that file"
        )
    return _read_nf4(path)


def _read_gguf(path: Path) -> dict:
    import gguf
    import numpy as np
    import torch
    from diffusers.quantizers.gguf.utils import GGUFParameter

    from runtime.checkpoint.gguf import read_gguf_header

    read_gguf_header(path)  # our checks first: one sentence for a bad file
    plain = {
        gguf.GGMLQuantizationType.F32: torch.float32,
        gguf.GGMLQuantizationType.F16: torch.float16,
    }
    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        array = np.array(t.data)  # a copy: the file's memory map is released
        shape = tuple(int(d) for d in reversed(t.shape))
        if t.tensor_type in plain:
            out[t.name] = torch.from_numpy(array).to(plain[t.tensor_type]).reshape(shape)
        elif t.tensor_type is gguf.GGMLQuantizationType.BF16:
            out[t.name] = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16).reshape(shape)
        else:
            packed = torch.from_numpy(array.view(np.uint8)).reshape(*shape[:-1], -1)
            out[t.name] = GGUFParameter(packed, quant_type=t.tensor_type)
    return out


def _from_gguf(name: str, tensor, path: Path):
    import torch
    from diffusers.quantizers.gguf.utils import GGUFParameter

    from runtime.engine.quantized import QuantInfo, quantized_parameter

    if not isinstance(tensor, GGUFParameter):
        return tensor.contiguous().clone()
    try:
        dtype = DType(tensor.quant_type.name.lower())
    except ValueError:
        known = ", ".join(d.value for d in DType if d.is_gguf)
        raise CheckpointError(
            f"tensor {name!r} of {path} is {tensor.quant_type.name}, which is not read yet "
            f"(known: {known}): convert the file with one of those"
        ) from None
    packed = tensor.as_tensor().contiguous().clone()
    info = QuantInfo(dtype, tuple(int(d) for d in tensor.quant_shape), packed.numel())
    return quantized_parameter(packed, info)


def _read_nf4(path: Path) -> dict:
    import torch
    from bitsandbytes.functional import QuantState
    from safetensors.torch import load_file

    from runtime.checkpoint.header import read_header
    from runtime.checkpoint.nf4 import nf4_weights
    from runtime.engine.quantized import QuantInfo, quantized_parameter

    header = read_header(path)
    weights = nf4_weights(header)
    state = load_file(str(path))
    for w in weights:
        packed = state.pop(w.name)
        parts = {n[len(w.name) + 1:]: state.pop(n) for n in w.tensors if n != w.name}
        quant_state = QuantState.from_dict(parts, device=torch.device("cpu"))
        state[w.name] = quantized_parameter(packed, QuantInfo(DType.NF4, w.shape, w.nbytes, quant_state))
    return state


def shape_of(tensor) -> tuple[int, ...]:
    from runtime.engine.quantized import quant_info

    info = quant_info(tensor)
    return info.shape if info is not None else tuple(tensor.shape)


def assign(model, state: dict) -> None:
    """Put every tensor into `model` (built on meta) as its parameter or buffer, as it is."""
    import torch

    for name, tensor in state.items():
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        if leaf in module._parameters:
            if not isinstance(tensor, torch.nn.Parameter):
                tensor = torch.nn.Parameter(tensor, requires_grad=False)
            module._parameters[leaf] = tensor
        else:
            module._buffers[leaf] = tensor


def dequantize_model(model, dtype) -> None:
    """Every packed matrix of `model` dequantized into `dtype` in place (the plain model)."""
    from runtime.engine.quantized import QUANT_ATTR, host_dequantized, quant_info

    for module in model.modules():
        for leaf, param in list(module._parameters.items()):
            if param is not None and quant_info(param) is not None:
                data = host_dequantized(param, dtype)
                delattr(param, QUANT_ATTR)
                param.data = data
