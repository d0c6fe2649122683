"""bitsandbytes NF4 weights inside a safetensors file, found and checked from the header.

bitsandbytes (through diffusers' or transformers' `save_pretrained`) stores one 4-bit matrix
`X.weight` as several tensors:

    X.weight                                  U8   [ceil(n/2), 1]   two 4-bit codes a byte
    X.weight.absmax                           F32  [ceil(n/blocksize)]     (U8 when nested)
    X.weight.quant_map                        F32  [16]             the NF4 code book
    X.weight.nested_absmax                    F32  [ceil(blocks/nested_blocksize)]  (nested)
    X.weight.nested_quant_map                 F32  [256]                                (nested)
    X.weight.quant_state.bitsandbytes__nf4    U8   [k]  UTF-8 JSON: quant_type, blocksize,
                                                       dtype, shape (+ nested_blocksize,
                                                       nested_dtype, nested_offset)

with n the matrix's element count (`QuantState.as_dict(packed=True)`). All of these travel
with the matrix, so they count as its packed bytes. Only the small JSON tensors are read from
the data region; every inconsistency is one `CheckpointError` naming the file and the tensor.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from runtime.checkpoint.header import Header
from runtime.errors import CheckpointError
from runtime.strict_json import StrictJsonError, loads_strict

STATE_SUFFIX = ".quant_state.bitsandbytes__"
NF4_STATE = STATE_SUFFIX + "nf4"
MAX_STATE_BYTES = 4096
MAX_DIM = 1 << 20  # no matrix side of a released model is near this
MAX_OFFSET = 65504.0  # the largest float16: block scales (absmax) beyond it are not weights
_PARTS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
_STATE_KEYS = {"quant_type", "blocksize", "dtype", "shape"}
_NESTED_KEYS = {"nested_blocksize", "nested_dtype", "nested_offset"}
_DTYPES = {"bfloat16", "float16", "float32"}
_FIX = "the file is damaged or not as bitsandbytes writes it; save or download it again"


@dataclasses.dataclass(frozen=True)
class NF4Weight:
    name: str  # the matrix, e.g. "transformer_blocks.0.attn.to_q.weight"
    shape: tuple[int, ...]  # the dequantized matrix's shape
    dtype: str  # the dtype it dequantizes to ("bfloat16")
    blocksize: int
    nested: bool
    tensors: tuple[str, ...]  # every tensor of the file that belongs to it, itself included
    nbytes: int  # their bytes together: what travels


def is_nf4(header: Header) -> bool:
    return any(STATE_SUFFIX in t.name for t in header.tensors)


def nf4_weights(header: Header) -> tuple[NF4Weight, ...]:
    """Every NF4 matrix of the file, checked against its quant state."""
    path = header.path
    names = {t.name: t for t in header.tensors}
    out = []
    for info in header.tensors:
        if STATE_SUFFIX not in info.name:
            continue
        base, _, kind = info.name.partition(STATE_SUFFIX)
        if kind != "nf4" or not info.name.endswith(NF4_STATE):
            raise CheckpointError(
                f"tensor {info.name!r} in {path} is a bitsandbytes {kind or '?'} quant state; "
                f"only NF4 is read: quantize the model with bnb_4bit_quant_type='nf4'"
            )
        state = _state(header, info)
        out.append(_weight(path, names, base, state))
    return tuple(out)


def check_companions(header: Header, weights: tuple[NF4Weight, ...]) -> None:
    """Every NF4 companion tensor (block scales, code books) belongs to a matrix whose quant
    state the file holds: a file whose states were stripped is not read as plain weights."""
    owned = {n for w in weights for n in w.tensors}
    for info in header.tensors:
        part = info.name.rpartition(".")[2]
        if part in _PARTS and info.name not in owned:
            base = info.name[: -len(part) - 1]
            raise CheckpointError(
                f"tensor {info.name!r} in {header.path} is an NF4 {part} but the file lacks the "
                f"quant state of {base!r} ({base}{NF4_STATE}): it was stripped; {_FIX}"
            )


def _state(header: Header, info) -> dict[str, Any]:
    where = f"quant state {info.name!r} in {header.path}"
    if info.dtype != "U8" or len(info.shape) != 1 or not 0 < info.nbytes <= MAX_STATE_BYTES:
        raise CheckpointError(
            f"{where} must be a 1-D U8 tensor of at most {MAX_STATE_BYTES} bytes: {_FIX}"
        )
    with open(header.path, "rb") as f:
        f.seek(8 + header.header_bytes + info.begin)
        raw = f.read(info.nbytes)
    try:
        state = loads_strict(raw.decode("utf-8"))
    except StrictJsonError as e:
        raise CheckpointError(f"{where}: {e}; {_FIX}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"{where} is not UTF-8 JSON: {_FIX}") from None
    if type(state) is not dict:
        raise CheckpointError(f"{where} is not a JSON object: {_FIX}")
    missing = sorted(_STATE_KEYS - set(state))
    unknown = sorted(set(state) - _STATE_KEYS - _NESTED_KEYS)
    nested = _NESTED_KEYS & set(state)
    if nested:
        missing += sorted(_NESTED_KEYS - nested)
    if missing:
        raise CheckpointError(f"{where} lacks the field {missing[0]!r}: {_FIX}")
    if unknown:
        raise CheckpointError(f"{where} has the unknown field {unknown[0]!r}: {_FIX}")
    if state["quant_type"] != "nf4":
        raise CheckpointError(f"{where} says quant_type {state['quant_type']!r:.40}, not 'nf4': {_FIX}")
    shape = state["shape"]
    if type(shape) is not list or not shape or any(type(d) is not int or d <= 0 for d in shape):
        raise CheckpointError(f"{where} has shape {shape!r:.60}, not a list of integers > 0: {_FIX}")
    if any(d > MAX_DIM for d in shape) or len(shape) > 4:
        raise CheckpointError(f"{where} has shape {shape!r:.60}, larger than any real matrix: {_FIX}")
    for key in ("blocksize", "nested_blocksize"):
        value = state.get(key, 64)
        if type(value) is not int or not 32 <= value <= 4096 or value & (value - 1):
            raise CheckpointError(
                f"{where} has {key} {value!r:.40}, not a power of two from 32 to 4096: {_FIX}"
            )
    for key in ("dtype", "nested_dtype"):
        if type(state.get(key, "float32")) is not str or state.get(key, "float32") not in _DTYPES:
            raise CheckpointError(
                f"{where} has {key} {state[key]!r:.40}, not one of {', '.join(sorted(_DTYPES))}: {_FIX}"
            )
    offset = state.get("nested_offset", 0.0)
    if type(offset) not in (int, float) or not (math.isfinite(offset) and abs(offset) <= MAX_OFFSET):
        raise CheckpointError(
            f"{where} has nested_offset {offset!r:.40}, not a finite number within ±{MAX_OFFSET:g} "
            f"(the mean of its block scales): {_FIX}"
        )
    return state


def _weight(path: Path, names: dict, base: str, state: dict) -> NF4Weight:
    numel = 1
    for d in state["shape"]:
        numel *= d
    nested = "nested_offset" in state
    blocks = -(-numel // state["blocksize"])
    expected = {
        "": ("U8", -(-numel // 2)),
        "absmax": ("U8" if nested else "F32", blocks),
        "quant_map": ("F32", 16),
    }
    if nested:
        expected["nested_absmax"] = ("F32", -(-blocks // state["nested_blocksize"]))
        expected["nested_quant_map"] = ("F32", 256)
    tensors = []
    for part, (dtype, count) in expected.items():
        name = f"{base}.{part}" if part else base
        info = names.get(name)
        if info is None:
            raise CheckpointError(
                f"{path} has the NF4 quant state of {base!r} but not its tensor {name!r}: {_FIX}"
            )
        elements = 1
        for d in info.shape:
            elements *= d
        if info.dtype != dtype or elements != count:
            raise CheckpointError(
                f"tensor {name!r} in {path} is {info.dtype} with {elements} elements but the NF4 "
                f"quant state of shape {state['shape']} needs {dtype} with {count}: {_FIX}"
            )
        tensors.append(name)
    for part in _PARTS:
        if f"{base}.{part}" in names and part not in expected:
            raise CheckpointError(
                f"tensor {base}.{part!s} in {path} does not belong to a "
                f"{'nested' if nested else 'plain'} NF4 quant state: {_FIX}"
            )
    tensors.append(base + NF4_STATE)
    nbytes = sum(names[n].nbytes for n in tensors)
    return NF4Weight(base, tuple(state["shape"]), state["dtype"], state["blocksize"], nested,
                     tuple(tensors), nbytes)
