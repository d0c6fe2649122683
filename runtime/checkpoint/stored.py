"""The tensors of a checkpoint as they are stored: name, storage name, bytes on disk.

One list for every file kind `inspect` reads, so block accounting never asks what the file
was: a safetensors tensor is stored under its dtype (`bf16`, `fp8`, or the tag), a GGUF tensor
under its ggml type (`q4_k`, `q8_0`; `F16`/`BF16`/`F32` as `fp16`/`bf16`/`fp32`), and a
bitsandbytes NF4 matrix as `nf4` with all its companion tensors (absmax, code books, quant
state) counted in its bytes, since they travel with it.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path

from runtime.dtypes import SAFETENSORS_TO_DTYPE


class FileFormat(str, enum.Enum):
    SAFETENSORS = "safetensors"
    GGUF = "gguf"
    NF4 = "nf4"  # safetensors as bitsandbytes writes 4-bit NF4 weights


NF4 = "nf4"


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    name: str
    storage: str  # our name: bf16, fp8, q4_k, nf4, ... (the tag where we have none)
    nbytes: int


def storage_name(tag: str) -> str:
    """Our name for a safetensors tag or a ggml type name (`BF16` -> `bf16`, `Q4_K` -> `q4_k`);
    a safetensors tag we have no name for is kept as it is."""
    dtype = SAFETENSORS_TO_DTYPE.get(tag)
    if dtype is not None:
        return dtype.value
    from runtime.dtypes import SAFETENSORS_DTYPES

    return tag if tag in SAFETENSORS_DTYPES else tag.lower()


def safetensors_tensors(headers) -> tuple[FileFormat, list[StoredTensor]]:
    """The tensors of safetensors headers; NF4 matrices grouped with their companions."""
    from runtime.checkpoint.nf4 import check_companions, is_nf4, nf4_weights

    out: list[StoredTensor] = []
    kind = FileFormat.SAFETENSORS
    for header in headers:
        grouped: dict[str, str] = {}
        weights = nf4_weights(header) if is_nf4(header) else ()
        check_companions(header, weights)
        if weights:
            kind = FileFormat.NF4
            for weight in weights:
                out.append(StoredTensor(weight.name, NF4, weight.nbytes))
                grouped.update((n, weight.name) for n in weight.tensors)
        out.extend(
            StoredTensor(t.name, storage_name(t.dtype), t.nbytes)
            for t in header.tensors if t.name not in grouped
        )
    return kind, out


def gguf_tensors(path: Path) -> list[StoredTensor]:
    from runtime.checkpoint.gguf import read_gguf_header

    header = read_gguf_header(path)
    return [StoredTensor(t.name, storage_name(t.quant), t.nbytes) for t in header.tensors]
