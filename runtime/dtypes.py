"""Storage dtypes by name: what users type, what safetensors writes, what torch uses.

`fp8` storage keeps the matrices of Linear layers (2-D weights) in float8_e4m3fn and
everything else (biases, norm scales) in bf16, as fp8 FLUX checkpoints do.
"""

from __future__ import annotations

import enum


class DType(str, enum.Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"  # float8_e4m3fn
    FP8_E5M2 = "fp8_e5m2"

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]

    @property
    def is_fp8(self) -> bool:
        return self in (DType.FP8, DType.FP8_E5M2)

    def torch(self):
        import torch

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
    return storage


def compute_dtype(storage: DType) -> DType:
    """The dtype blocks compute in: fp8 storage computes in bf16."""
    return DType.BF16 if storage.is_fp8 else storage
