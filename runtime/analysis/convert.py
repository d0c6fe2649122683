"""Store one block in another format: fp8, or GGUF Q8_0 / Q4_K, as a checkpoint would hold it.

Which tensor takes which dtype is `runtime.dtypes.storage_dtype`'s rule (the inventory's):
fp8 keeps matrices in float8_e4m3fn and vectors in bf16; GGUF quantizes matrices whose rows
are whole quant blocks and keeps other matrices in bf16, vectors in fp32.

- `packed(tensor, fmt)`: the tensor as stored, a quantized matrix as an engine parameter of
  packed bytes carrying its `QuantInfo` (`runtime.engine.quantized`), exactly as a GGUF file
  loads. Q8_0 is gguf-py's quantizer; gguf-py has none for Q4_K, so Q4_K is quantized here
  (`quantize_q4_k`: per 32-value sub-block min/max scales, 6-bit, under fp16 super-block
  factors; llama.cpp's converter searches the scales iteratively and errs a little less).
- `computed(tensor, fmt, compute)`: the values a block computes with when stored so, made by
  the engine's own functions (`dequantize`, then the cast to the compute dtype), so a model
  converted ahead of time with this equals one the engine converts while it runs.
"""

from __future__ import annotations

from runtime.dtypes import DType, storage_dtype
from runtime.errors import UserError

FORMATS = (DType.FP8, DType.Q8_0, DType.Q4_K)  # the block formats plans and analysis offer
_Q4_K_BYTES = 144  # d, dmin (fp16), 12 bytes of 6-bit scales and mins, 128 bytes of nibbles


def check_format(fmt: DType) -> DType:
    if fmt not in FORMATS:
        raise UserError(f"block format {fmt.value!r} is not offered: choose one of "
                        f"{', '.join(f.value for f in FORMATS)}")
    return fmt


def quantize_q4_k(matrix):
    """Packed Q4_K bytes `[rows, cols / 256 * 144]` of a float matrix whose rows are whole
    super-blocks of 256 (the layout `diffusers.quantizers.gguf.utils` dequantizes)."""
    import torch

    rows, cols = matrix.shape
    x = matrix.detach().float().reshape(-1, 8, 32)
    low = x.amin(dim=-1).clamp(max=0.0)
    scale = (x.amax(dim=-1) - low) / 15.0
    d = (scale.amax(dim=-1) / 63.0).half()
    dmin = ((-low).amax(dim=-1) / 63.0).half()
    sc = _ratio(scale, d.float()[:, None]).round().clamp(0, 63)
    m = _ratio(-low, dmin.float()[:, None]).round().clamp(0, 63)
    step = d.float()[:, None] * sc
    offset = dmin.float()[:, None] * m
    q = _ratio(x + offset[..., None], step[..., None]).round().clamp(0, 15).to(torch.uint8)
    sc, m = sc.to(torch.uint8), m.to(torch.uint8)
    scales = torch.cat([
        (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6),
        (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6),
        (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4),
    ], dim=1)
    q = q.reshape(-1, 4, 2, 32)  # four chunks of 64: two sub-blocks each, low and high nibble
    nibbles = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)
    blocks = torch.cat([d.view(torch.uint8).reshape(-1, 2), dmin.view(torch.uint8).reshape(-1, 2),
                        scales, nibbles], dim=1)
    return blocks.reshape(rows, cols // 256 * _Q4_K_BYTES)


def _ratio(a, b):
    import torch

    return torch.where(b > 0, a / torch.where(b > 0, b, torch.ones_like(b)), torch.zeros_like(a))


def _quantize(matrix, fmt: DType):
    import gguf
    import torch
    from gguf.quants import quantize

    if fmt is DType.Q4_K:
        return quantize_q4_k(matrix)
    array = matrix.detach().float().cpu().numpy()
    return torch.from_numpy(quantize(array, gguf.GGMLQuantizationType[fmt.value.upper()]))


def packed(tensor, fmt: DType):
    """`tensor` as a checkpoint in `fmt` stores it (a packed engine parameter when quantized)."""
    from runtime.engine.quantized import QuantInfo, quantized_parameter

    dtype = storage_dtype(fmt, tuple(tensor.shape))
    if dtype.is_quantized:
        data = _quantize(tensor.detach().cpu(), dtype).contiguous()
        return quantized_parameter(data, QuantInfo(dtype, tuple(tensor.shape), data.numel()))
    return tensor.detach().to(dtype.torch())


def computed(tensor, fmt: DType, compute):
    """The values the engine computes with for `tensor` stored as `fmt` (in `compute`)."""
    from runtime.engine.quantized import host_dequantized

    return host_dequantized(packed(tensor, fmt), compute).to(tensor.device)


def convert_block(block, fmt: DType, compute) -> None:
    """Every parameter and floating buffer of `block` replaced, in place, by the values it
    computes with when stored as `fmt` (the ahead-of-time conversion)."""
    for tensor in _floating_tensors(block):
        tensor.data = computed(tensor.data, fmt, compute)


def pack_block(block, fmt: DType) -> None:
    """Every parameter of `block` stored as `fmt`, in place: quantized matrices become packed
    engine parameters, fp8 matrices float8 tensors (what the engine streams and converts)."""
    import torch

    for module in block.modules():
        for leaf, param in list(module._parameters.items()):
            if param is not None and param.is_floating_point():
                stored = packed(param.data, fmt)
                if not isinstance(stored, torch.nn.Parameter):
                    stored = torch.nn.Parameter(stored, requires_grad=False)
                module._parameters[leaf] = stored


def _floating_tensors(block):
    return [t for t in list(block.parameters()) + list(block.buffers()) if t.is_floating_point()]


def block_is_quantizable(block, fmt: DType) -> bool:
    """Whether any matrix of `block` takes `fmt` itself (not a fallback dtype)."""
    return any(storage_dtype(fmt, tuple(p.shape)) is fmt for p in block.parameters())

