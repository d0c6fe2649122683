"""The header of a safetensors file, read and checked without touching the data region.

A safetensors file is an 8-byte little-endian header length `n`, `n` bytes of UTF-8 JSON (an
object: tensor name -> {dtype, shape, data_offsets}, plus an optional `__metadata__` of
strings), then the data region. We read only the first `8 + n` bytes, so a 24 GB checkpoint
answers in microseconds. The checks follow the reference reader (safetensors' Rust crate) and
go further: duplicate names, unknown fields, non-finite numbers and booleans posing as
integers are refused too. Every refusal is one `CheckpointError` sentence naming the file
(and the tensor where there is one).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from runtime.dtypes import SAFETENSORS_DTYPES
from runtime.errors import CheckpointError
from runtime.strict_json import DuplicateKey, NonFiniteConstant, loads_strict

MAX_HEADER_BYTES = 100_000_000  # the reference reader's limit
MAX_TENSOR_BYTES = 2**62  # no real tensor comes near; beyond it is corruption
METADATA_KEY = "__metadata__"
_TENSOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_FIX = "the file is damaged or not a safetensors checkpoint; download or export it again"


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # the safetensors tag, e.g. "BF16", "F8_E4M3"
    shape: tuple[int, ...]
    begin: int  # byte offsets into the data region
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclasses.dataclass(frozen=True)
class Header:
    path: Path
    tensors: tuple[TensorInfo, ...]  # in data-region order
    metadata: Mapping[str, str]
    header_bytes: int  # n: the JSON header's length, padding included
    data_bytes: int  # length of the data region

    @property
    def file_bytes(self) -> int:
        return 8 + self.header_bytes + self.data_bytes

    def tensor(self, name: str) -> TensorInfo:
        for info in self.tensors:
            if info.name == name:
                return info
        raise KeyError(name)


def read_header(path: str | Path) -> Header:
    """The checked header of the safetensors file at `path`; never reads tensor data."""
    path = Path(path)
    from runtime.files import open_regular

    try:
        with open_regular(path, "checkpoint", CheckpointError) as f:  # a FIFO never blocks us
            file_bytes = os.fstat(f.fileno()).st_size
            header_bytes, raw = _read_raw(f, path, file_bytes)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    tensors, metadata = _parse(raw, path)
    data_bytes = file_bytes - 8 - header_bytes
    ordered = _check_layout(tensors, path, data_bytes)
    return Header(path, ordered, MappingProxyType(metadata), header_bytes, data_bytes)


def _read_raw(f, path: Path, file_bytes: int) -> tuple[int, bytes]:
    if file_bytes < 8:
        raise CheckpointError(
            f"{path} is {file_bytes} bytes, too short to hold the 8-byte safetensors header "
            f"length: {_FIX}"
        )
    prefix = f.read(8)
    if len(prefix) != 8:
        raise CheckpointError(f"{path} ended while reading its header length: {_FIX}")
    header_bytes = int.from_bytes(prefix, "little")
    if header_bytes > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{path} declares a {header_bytes}-byte header, over the {MAX_HEADER_BYTES}-byte "
            f"limit: {_FIX}"
        )
    if 8 + header_bytes > file_bytes:
        raise CheckpointError(
            f"{path} declares a {header_bytes}-byte header but the file is only {file_bytes} "
            f"bytes: the file is truncated; download or export it again"
        )
    raw = f.read(header_bytes)
    if len(raw) != header_bytes:
        raise CheckpointError(f"{path} ended inside its header (file changed while read): {_FIX}")
    return header_bytes, raw


def _parse(raw: bytes, path: Path) -> tuple[dict[str, dict], dict[str, str]]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"the header of {path} is not UTF-8 text: {_FIX}") from None
    if not text.startswith("{"):
        raise CheckpointError(f"the header of {path} does not start with a JSON object: {_FIX}")
    try:
        # Trailing spaces (the writer pads the header to 8 bytes) are JSON whitespace.
        data = loads_strict(text)
    except DuplicateKey as e:
        raise CheckpointError(
            f"the header of {path} names {e.key!r} twice in one object: {_FIX}"
        ) from None
    except NonFiniteConstant as e:
        raise CheckpointError(
            f"the header of {path} holds {e.name}, which is not a number safetensors allows: {_FIX}"
        ) from None
    except (ValueError, RecursionError) as e:
        if isinstance(e, json.JSONDecodeError):
            reason = e.msg
        else:
            reason = "a number too long or nesting too deep"
        raise CheckpointError(
            f"the header of {path} is not valid JSON ({reason}): {_FIX}"
        ) from None
    if type(data) is not dict:
        raise CheckpointError(f"the header of {path} is not a JSON object: {_FIX}")
    metadata = _metadata(data.pop(METADATA_KEY, {}), path)
    return data, metadata


def _metadata(value: Any, path: Path) -> dict[str, str]:
    if type(value) is not dict:
        raise CheckpointError(
            f"the {METADATA_KEY} of {path} must be an object of strings, got "
            f"{type(value).__name__}: {_FIX}"
        )
    for key, item in value.items():
        if type(item) is not str:
            raise CheckpointError(
                f"the {METADATA_KEY} entry {key!r} of {path} must be a string, got "
                f"{type(item).__name__}: {_FIX}"
            )
    return dict(value)


def _tensor(name: str, entry: Any, path: Path) -> TensorInfo:
    where = f"tensor {name!r} in {path}"
    if type(entry) is not dict:
        raise CheckpointError(
            f"{where} must be an object with dtype, shape and data_offsets: {_FIX}"
        )
    unknown = sorted(set(entry) - _TENSOR_KEYS)
    if unknown:
        raise CheckpointError(f"{where} has the unknown field {unknown[0]!r}: {_FIX}")
    missing = sorted(_TENSOR_KEYS - set(entry))
    if missing:
        raise CheckpointError(f"{where} is missing the field {missing[0]!r}: {_FIX}")
    dtype = entry["dtype"]
    if type(dtype) is not str or dtype not in SAFETENSORS_DTYPES:
        known = ", ".join(SAFETENSORS_DTYPES)
        raise CheckpointError(
            f"{where} has the unknown dtype {_short(dtype)} (known: {known}): {_FIX}"
        )
    shape = entry["shape"]
    if type(shape) is not list or any(type(d) is not int or d < 0 for d in shape):
        raise CheckpointError(
            f"{where} has shape {_short(shape)}, not a list of integers >= 0: {_FIX}"
        )
    offsets = entry["data_offsets"]
    if (
        type(offsets) is not list
        or len(offsets) != 2
        or any(type(o) is not int or o < 0 for o in offsets)
    ):
        raise CheckpointError(
            f"{where} has data_offsets {_short(offsets)}, not two integers >= 0: {_FIX}"
        )
    begin, end = offsets
    if begin > end:
        raise CheckpointError(
            f"{where} has data_offsets that end before they begin ({begin} > {end}): {_FIX}"
        )
    expected = _byte_size(shape, SAFETENSORS_DTYPES[dtype], where)
    if end - begin != expected:
        raise CheckpointError(
            f"{where} spans {end - begin} bytes but its {dtype} shape {_short(shape)} needs "
            f"{expected}: {_FIX}"
        )
    return TensorInfo(name, dtype, tuple(shape), begin, end)


def _byte_size(shape: list[int], itemsize: int, where: str) -> int:
    size = itemsize
    for dim in shape:
        if dim > MAX_TENSOR_BYTES:
            size = dim
        else:
            size *= dim  # both factors are at most the cap: no runaway integers
        if size > MAX_TENSOR_BYTES:
            raise CheckpointError(
                f"{where} has shape {_short(shape)}, larger than any real tensor: {_FIX}"
            )
    return size


def _check_layout(entries: dict[str, Any], path: Path, data_bytes: int) -> tuple[TensorInfo, ...]:
    tensors = sorted(
        (_tensor(name, entry, path) for name, entry in entries.items()),
        key=lambda t: (t.begin, t.end),
    )
    position = 0
    for info in tensors:
        if info.begin != position:
            relation = "overlaps the tensor before it" if info.begin < position else "leaves a gap"
            raise CheckpointError(
                f"tensor {info.name!r} in {path} starts at byte {info.begin} of the data region "
                f"and {relation} (expected {position}): {_FIX}"
            )
        position = info.end
    if position != data_bytes:
        raise CheckpointError(
            f"{path} has a {data_bytes}-byte data region but its tensors cover {position} bytes: "
            f"the file is truncated or has extra bytes; download or export it again"
        )
    return tuple(tensors)


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
