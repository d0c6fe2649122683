"""Quantized weights in the engine: packed bytes that travel, dequantized where they are used.

A quantized matrix (GGUF or bitsandbytes NF4) is an ordinary `nn.Parameter` of packed uint8
bytes carrying a `QuantInfo` under `QUANT_ATTR`: its quant type, its real shape, its bytes in
the checkpoint and, for NF4, bitsandbytes' `QuantState` (absmax and code books, kept beside
the packed bytes and moved to a device once). The engine packs those bytes like any other
dtype group (one more group of the pinned buffer, named by the quant type), and:

- `auto`: each module that owns such a tensor gets a pre-hook that points it at a
  dequantized copy in the compute dtype for the length of its forward, and a hook that points
  it back (as `casting.JustInTimeCast` does for fp8). The same hooks cast any other floating
  tensor not in the compute dtype (GGUF files keep vectors in fp32, some matrices in fp16).
- `pre`: the bytes are dequantized on the host once, when the block is packed or placed.

Dequantization is diffusers' GGUF torch code (`diffusers.quantizers.gguf.utils`, the path
diffusers' own `GGUFLinear` takes: dequantize, then cast to the compute dtype) and
bitsandbytes' `dequantize_4bit`, so a plain model dequantized with the same functions ahead
of time computes the same numbers.
"""

from __future__ import annotations

import dataclasses

import torch

from runtime.dtypes import DType
from runtime.engine.casting import JustInTimeCast

QUANT_ATTR = "_planner_quant"


@dataclasses.dataclass(eq=False)
class QuantInfo:
    dtype: DType  # q4_k, q8_0, ..., nf4
    shape: tuple[int, ...]  # the dequantized matrix
    nbytes: int  # bytes in the checkpoint (NF4: with its absmax, code books and quant state)
    state: object = None  # NF4: bitsandbytes QuantState (on the host)
    _states: dict = dataclasses.field(default_factory=dict)  # device -> QuantState there

    def state_on(self, device: torch.device):
        key = str(device)
        if key not in self._states:
            self._states[key] = self.state if device.type == "cpu" else _state_to(self.state, device)
        return self._states[key]


def _state_to(state, device):
    import copy

    moved = copy.deepcopy(state)
    moved.to(device)
    return moved


def quant_info(tensor) -> QuantInfo | None:
    return getattr(tensor, QUANT_ATTR, None)


def quantized_parameter(packed: torch.Tensor, info: QuantInfo) -> torch.nn.Parameter:
    param = torch.nn.Parameter(packed, requires_grad=False)
    setattr(param, QUANT_ATTR, info)
    return param


def is_packed(tensor) -> bool:
    """A quantized tensor currently holding its packed bytes (not a dequantized copy)."""
    return quant_info(tensor) is not None and tensor.dtype == torch.uint8


def dequantize(data: torch.Tensor, info: QuantInfo, dtype: torch.dtype) -> torch.Tensor:
    """The matrix `data` (packed bytes of `info`) holds, in `dtype`, on `data`'s device."""
    if info.dtype is DType.NF4:
        import bitsandbytes.functional as F

        out = F.dequantize_4bit(data, info.state_on(data.device))
        return out.reshape(info.shape).to(dtype)
    import gguf
    from diffusers.quantizers.gguf.utils import GGML_QUANT_SIZES, dequantize_functions

    kind = gguf.GGMLQuantizationType[info.dtype.value.upper()]
    _, type_size = GGML_QUANT_SIZES[kind]
    blocks = data.reshape(-1, type_size)
    out = dequantize_functions[kind](blocks, *GGML_QUANT_SIZES[kind])
    return out.reshape(info.shape).to(dtype)


def host_dequantized(tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor`'s data in `dtype`: dequantized when packed, cast otherwise."""
    info = quant_info(tensor)
    if info is not None and tensor.dtype == torch.uint8:
        return dequantize(tensor.data, info, dtype)
    return tensor.data.to(dtype)


def _needs_hook(tensor, compute: torch.dtype) -> bool:
    return quant_info(tensor) is not None or (
        tensor.is_floating_point() and tensor.dtype != compute
    )


class JustInTimeDequant(JustInTimeCast):
    """Hooks for one module: dequantize (or cast) its tensors for the length of its forward.
    The stash, the restore after the forward and `remove()` are the fp8 cast's."""

    def before(self, module, args):
        self.after(module, args, None)  # a forward that raised may have left copies behind
        for tensor in self.tensors:
            if is_packed(tensor):
                self.stash.append((tensor, tensor.data))
                tensor.data = dequantize(tensor.data, quant_info(tensor), self.compute)
            elif tensor.is_floating_point() and tensor.dtype != self.compute:
                self.stash.append((tensor, tensor.data))
                tensor.data = tensor.data.to(self.compute)


def has_quantized(model) -> bool:
    return any(quant_info(t) is not None for t in model.parameters())


def install_dequant(root, compute: torch.dtype) -> list[JustInTimeDequant]:
    """Dequantization hooks on every module under `root` owning a quantized tensor or a
    floating tensor outside the compute dtype."""
    out = []
    for module in root.modules():
        own = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if any(_needs_hook(t, compute) for t in own):
            out.append(JustInTimeDequant(module, compute))
    return out
