"""Storage dtypes by name: what users type, what safetensors writes, what torch uses.

`fp8` storage keeps the matrices of Linear layers (2-D weights) in float8_e4m3fn and
everything else (biases, norm scales) in bf16, as fp8 FLUX checkpoints do.

Quantized storage (GGUF types `q8_0` ... `q2_k`, bitsandbytes `nf4`) is packed: a block of
`block_elements` weights takes `block_bytes` bytes, so sizes go through `nbytes(numel)`, never
`itemsize`. As the converters people use write them: GGUF (city96's, ComfyUI-GGUF) quantizes a
matrix whose rows are whole quant blocks, keeps other matrices in 16-bit and vectors in fp32;
bitsandbytes quantizes every Linear matrix and keeps the rest in bf16. Both compute in bf16.
"""

from __future__ import annotations

import enum


class DType(str, enum.Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"  # float8_e4m3fn
    FP8_E5M2 = "fp8_e5m2"
    Q8_0 = "q8_0"
    Q6_K = "q6_k"
    Q5_K = "q5_k"
    Q5_1 = "q5_1"
    Q5_0 = "q5_0"
    Q4_K = "q4_k"
    Q4_1 = "q4_1"
    Q4_0 = "q4_0"
    Q3_K = "q3_k"
    Q2_K = "q2_k"
    NF4 = "nf4"  # bitsandbytes 4-bit NormalFloat, blocksize 64, nested statistics

    @property
    def itemsize(self) -> int:
        if self.is_quantized:
            raise ValueError(f"{self.value} is packed: use nbytes(numel)")
        return _ITEMSIZE[self]

    @property
    def element_size(self) -> int:
        """Bytes of one element of a buffer of this dtype (packed types are uint8 bytes)."""
        return 1 if self.is_quantized else _ITEMSIZE[self]

    @property
    def is_fp8(self) -> bool:
        return self in (DType.FP8, DType.FP8_E5M2)

    @property
    def is_quantized(self) -> bool:
        return self in QUANT_BLOCKS

    @property
    def is_gguf(self) -> bool:
        return self.is_quantized and self is not DType.NF4

    @property
    def casts(self) -> bool:
        """Whether blocks stored this way need a cast (fp8) or a dequantization before use."""
        return self.is_fp8 or self.is_quantized

    def nbytes(self, numel: int) -> int:
        """Bytes of `numel` elements stored this way (whole quant blocks for packed types)."""
        if not self.is_quantized:
            return numel * _ITEMSIZE[self]
        elements, size = QUANT_BLOCKS[self]
        return -(-numel // elements) * size

    def numel_of(self, num_bytes: int) -> int:
        """Elements held in `num_bytes` stored this way (the inverse of `nbytes`; for NF4 its
        per-matrix code books and quant state are left out, under 1.3 KB a matrix)."""
        if not self.is_quantized:
            return num_bytes // _ITEMSIZE[self]
        elements, size = QUANT_BLOCKS[self]
        return num_bytes // size * elements

    def torch(self):
        import torch

        if self.is_quantized:
            return torch.uint8  # packed bytes
        return getattr(torch, _TORCH_NAME[self])

    @classmethod
    def parse(cls, text: str) -> "DType":
        from runtime.errors import UserError

        try:
            return cls(text.lower())
        except ValueError:
            names = ", ".join(d.value for d in cls)
            raise UserError(f"unknown dtype {text!r}: use one of {names}") from None

    @classmethod
    def from_torch(cls, dtype) -> "DType":
        name = str(dtype).removeprefix("torch.")
        for member, torch_name in _TORCH_NAME.items():
            if torch_name == name:
                return member
        raise ValueError(f"no storage dtype for torch dtype {dtype}")


# (elements per block, bytes per block): GGUF's from ggml (gguf.constants.GGML_QUANT_SIZES,
# checked against it by a test); NF4: 64 codes of 4 bits (32 bytes) + a uint8 absmax, plus the
# nested fp32 absmax of every 256 blocks, counted as 1/64 of a byte more per block (rounded up).
QUANT_BLOCKS = {
    DType.Q8_0: (32, 34), DType.Q6_K: (256, 210), DType.Q5_K: (256, 176),
    DType.Q5_1: (32, 24), DType.Q5_0: (32, 22), DType.Q4_K: (256, 144),
    DType.Q4_1: (32, 20), DType.Q4_0: (32, 18), DType.Q3_K: (256, 110), DType.Q2_K: (256, 84),
    DType.NF4: (64, 33),
}
_ITEMSIZE = {DType.FP32: 4, DType.BF16: 2, DType.FP16: 2, DType.FP8: 1, DType.FP8_E5M2: 1}
_TORCH_NAME = {
    DType.FP32: "float32",
    DType.BF16: "bfloat16",
    DType.FP16: "float16",
    DType.FP8: "float8_e4m3fn",
    DType.FP8_E5M2: "float8_e5m2",
}

# safetensors header dtype tag -> (our name, itemsize). Tags we do not store blocks in are
# still known (so a header is not rejected) and are reported by their tag.
SAFETENSORS_DTYPES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
SAFETENSORS_TO_DTYPE: dict[str, DType] = {
    "F32": DType.FP32, "BF16": DType.BF16, "F16": DType.FP16,
    "F8_E4M3": DType.FP8, "F8_E5M2": DType.FP8_E5M2,
}


def storage_dtype(storage: DType, param_shape: tuple[int, ...]) -> DType:
    """The dtype one tensor is stored in when a model is stored as `storage`."""
    if storage.is_fp8 and len(param_shape) < 2:
        return DType.BF16
    if storage.is_gguf:
        if len(param_shape) < 2:
            return DType.FP32
        if param_shape[-1] % QUANT_BLOCKS[storage][0]:
            return DType.BF16
    if storage is DType.NF4 and len(param_shape) != 2:
        return DType.BF16
    return storage


def compute_dtype(storage: DType) -> DType:
    """The dtype blocks compute in: fp8 and quantized storage compute in bf16."""
    return DType.BF16 if storage.casts else storage


def dequantized_bytes(dtype: DType, num_bytes: int) -> int:
    """Bytes of `num_bytes` stored as `dtype` once cast or dequantized to the compute dtype."""
    if not dtype.casts:
        return num_bytes
    return compute_dtype(dtype).nbytes(dtype.numel_of(num_bytes))
