"""The header of a GGUF file (llama.cpp's format, used for quantized diffusion transformers),
read and checked without touching the tensor data.

A GGUF file is: the magic `GGUF`, a uint32 version (2 or 3), the tensor and key-value counts
(uint64 each), the key-value metadata (typed values, arrays included), one info record per
tensor (name, dimensions in ggml order, ggml type, offset into the data region), padding to
`general.alignment` (default 32), then the data region. Sizes, type numbers and the quant
block layouts come from the `gguf` package (`gguf.constants`); the parsing is ours so that
every malformed field gets one `CheckpointError` sentence naming the file (the package's own
reader raises whatever numpy raises). Beyond the format: duplicate keys and tensor names,
booleans other than 0/1, non-UTF-8 strings, tensors overlapping or running past the end of
the file are refused. Big-endian files (rare) are refused with the fix.
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO, Mapping

from runtime.errors import CheckpointError

# GGML_MAX_DIMS is 4, but ComfyUI-GGUF's tools put the 5-D Conv3d weights of video models
# (Wan's and HunyuanVideo's patch_embedding) back into quantized files as F32
# (tools/fix_5d_tensors.py), and ComfyUI loads those files.
MAX_DIMS = 5
MAX_TENSOR_BYTES = 2**62
MAX_NESTING = 8  # arrays of arrays: no real file goes past 2
_MAGIC = b"GGUF"
_VERSIONS = (2, 3)
_FIX = "the file is damaged or not a GGUF checkpoint; download or convert it again"
ALIGNMENT_KEY = "general.alignment"


@dataclasses.dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    quant: str  # the ggml type name, upper case as ggml spells it: "Q4_K", "F16", "BF16"
    shape: tuple[int, ...]  # torch order (ggml lists dimensions innermost first)
    begin: int  # byte offsets into the data region
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclasses.dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    tensors: tuple[GGUFTensorInfo, ...]  # in data-region order
    metadata: Mapping[str, Any]
    data_start: int  # absolute file offset of the data region
    alignment: int
    file_bytes: int

    def tensor(self, name: str) -> GGUFTensorInfo:
        for info in self.tensors:
            if info.name == name:
                return info
        raise KeyError(name)


def is_gguf(path: str | Path) -> bool:
    """Whether the file at `path` starts with the GGUF magic (or is named .gguf)."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(4) == _MAGIC
    except OSError:
        return False


def quant_sizes() -> dict[str, tuple[int, int]]:
    """ggml type name -> (elements per block, bytes per block), from the gguf package."""
    from gguf.constants import GGML_QUANT_SIZES

    return {t.name: sizes for t, sizes in GGML_QUANT_SIZES.items()}


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """The checked header of the GGUF file at `path`; never reads tensor data."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return _Parser(f, path, size).header()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e


class _Parser:
    alignment_bytes = 32  # the file's alignment, once its metadata is read

    def __init__(self, f: BinaryIO, path: Path, size: int):
        self.f = f
        self.path = path
        self.size = size
        self.pos = 0

    # ------------------------------------------------------------ primitives

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.path} {what}: {_FIX}")

    def take(self, n: int, what: str) -> bytes:
        if n > self.size - self.pos:
            raise CheckpointError(
                f"{self.path} ends inside {what} (byte {self.pos} of {self.size}): the file is "
                f"truncated; download or convert it again"
            )
        data = self.f.read(n)
        if len(data) != n:
            raise self.fail(f"ended inside {what} (file changed while read)")
        self.pos += n
        return data

    def scalar(self, fmt: str, what: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.scalar("Q", f"the length of {what}")
        raw = self.take(length, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"has {what} that is not UTF-8 text") from None

    # ------------------------------------------------------------ structure

    def header(self) -> GGUFHeader:
        if self.size < 4 or self.f.read(4) != _MAGIC:
            raise CheckpointError(
                f"{self.path} does not start with the GGUF magic bytes: give a .gguf file "
                f"(a GGUF checkpoint as llama.cpp's or city96's tools write it)"
            )
        self.pos = 4
        version = self.scalar("I", "the version")
        if version not in _VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if swapped in _VERSIONS:
                raise CheckpointError(
                    f"{self.path} is a big-endian GGUF file: convert it to little-endian "
                    f"(gguf-py's gguf_convert_endian.py) and give that file"
                )
            raise self.fail(f"has GGUF version {version}, not one of 2 or 3")
        n_tensors = self.scalar("Q", "the tensor count")
        n_kv = self.scalar("Q", "the metadata count")
        # every record takes at least 8 bytes: counts beyond the file are corruption
        for count, what in ((n_tensors, "tensors"), (n_kv, "metadata entries")):
            if count * 8 > self.size:
                raise self.fail(f"declares {count} {what}, more than its {self.size} bytes hold")
        metadata = self.metadata(n_kv)
        alignment = self.alignment(metadata)
        self.alignment_bytes = alignment
        infos = [self.tensor_info(i) for i in range(n_tensors)]
        data_start = -(-self.pos // alignment) * alignment
        tensors = self.layout(infos, data_start, alignment)
        return GGUFHeader(self.path, version, tensors, MappingProxyType(metadata), data_start,
                          alignment, self.size)

    def metadata(self, count: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i in range(count):
            key = self.string(f"the key of metadata entry {i}")
            if key in out:
                raise self.fail(f"names the metadata key {key!r} twice")
            kind = self.scalar("I", f"the type of metadata {key!r}")
            out[key] = self.value(kind, f"metadata {key!r}", 0)
        return out

    def value(self, kind: int, what: str, depth: int) -> Any:
        from gguf.constants import GGUFValueType as V

        formats = {V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.UINT32: "I",
                   V.INT32: "i", V.FLOAT32: "f", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d"}
        if kind in formats:
            return self.finite(kind, [self.scalar(formats[V(kind)], what)], what)[0]
        if kind == V.BOOL:
            flag = self.scalar("B", what)
            if flag > 1:
                raise self.fail(f"has {what} as a boolean of value {flag}, not 0 or 1")
            return bool(flag)
        if kind == V.STRING:
            return self.string(what)
        if kind == V.ARRAY:
            if depth >= MAX_NESTING:
                raise self.fail(f"nests arrays in {what} deeper than {MAX_NESTING}")
            item = self.scalar("I", f"the item type of {what}")
            length = self.scalar("Q", f"the length of {what}")
            if length > self.size - self.pos:  # every item takes at least one byte
                raise self.fail(f"declares {length} items in {what}, more than the file holds")
            if item in formats:  # numbers: one read, no per-item Python objects
                fmt = formats[V(item)]
                raw = self.take(length * struct.calcsize(fmt), what)
                return self.finite(item, list(struct.unpack(f"<{length}{fmt}", raw)), what)
            return [self.value(item, f"item {n} of {what}", depth + 1) for n in range(length)]
        raise self.fail(f"has {what} of unknown value type {kind}")

    def finite(self, kind: int, values: list, what: str) -> list:
        """`values` unless a float among them is NaN or infinite: no such number is read."""
        from gguf.constants import GGUFValueType as V

        if kind in (V.FLOAT32, V.FLOAT64) and not all(math.isfinite(v) for v in values):
            raise self.fail(f"holds a NaN or infinite number in {what}")
        return values

    def alignment(self, metadata: dict[str, Any]) -> int:
        from gguf.constants import GGUF_DEFAULT_ALIGNMENT

        value = metadata.get(ALIGNMENT_KEY, GGUF_DEFAULT_ALIGNMENT)
        if type(value) is not int or value <= 0 or value & (value - 1) or value > 1 << 20:
            raise self.fail(f"has {ALIGNMENT_KEY} {value!r}, not a power of two up to 1 MiB")
        return value

    def tensor_info(self, i: int) -> tuple[str, tuple[int, ...], str, int]:
        from gguf.constants import GGMLQuantizationType

        name = self.string(f"the name of tensor {i}")
        where = f"tensor {name!r}"
        n_dims = self.scalar("I", f"the dimension count of {where}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise self.fail(f"gives {where} {n_dims} dimensions, not 1 to {MAX_DIMS}")
        dims = tuple(self.scalar("Q", f"the dimensions of {where}") for _ in range(n_dims))
        kind = self.scalar("I", f"the type of {where}")
        try:
            quant = GGMLQuantizationType(kind).name
        except ValueError:
            raise self.fail(f"gives {where} the unknown ggml type {kind}") from None
        offset = self.scalar("Q", f"the data offset of {where}")
        return name, dims, quant, offset

    def layout(self, infos, data_start: int, alignment: int) -> tuple[GGUFTensorInfo, ...]:
        sizes = quant_sizes()
        data_bytes = self.size - data_start
        seen: set[str] = set()
        tensors = []
        for name, dims, quant, offset in infos:
            where = f"tensor {name!r}"
            if name in seen:
                raise self.fail(f"names {where} twice")
            seen.add(name)
            if quant not in sizes:
                raise self.fail(f"gives {where} the ggml type {quant}, which has no known size")
            block, type_size = sizes[quant]
            if dims[0] % block:
                raise self.fail(
                    f"gives {where} a row of {dims[0]} elements, not a multiple of the "
                    f"{block}-element {quant} block"
                )
            nbytes = _byte_size(dims, block, type_size)
            if nbytes is None:
                raise self.fail(f"gives {where} dimensions {list(dims)}, larger than any real tensor")
            if offset % alignment:
                raise self.fail(f"places {where} at offset {offset}, not a multiple of {alignment}")
            if offset + nbytes > data_bytes:
                raise CheckpointError(
                    f"{where} in {self.path} runs to byte {data_start + offset + nbytes} but the "
                    f"file has {self.size}: the file is truncated; download or convert it again"
                )
            tensors.append(GGUFTensorInfo(name, quant, tuple(reversed(dims)), offset, offset + nbytes))
        tensors.sort(key=lambda t: (t.begin, t.end))
        position = 0
        for info in tensors:
            if info.begin < position:
                raise self.fail(f"stores tensor {info.name!r} over the tensor before it")
            self.no_gap(position, info.begin, f"before tensor {info.name!r}")
            position = info.end
        self.no_gap(position, data_bytes, "after its last tensor")
        return tuple(tensors)

    def no_gap(self, end: int, begin: int, where: str) -> None:
        """Tensors tile the data region (up to alignment padding): bytes no tensor claims mean
        the header lists fewer tensors than the file holds."""
        if begin - end >= self.alignment_bytes:
            raise self.fail(
                f"holds {begin - end} bytes {where} that no tensor in its header claims: the "
                f"header lists fewer tensors than the file holds"
            )


def _byte_size(dims: tuple[int, ...], block: int, type_size: int) -> int | None:
    size = type_size
    for i, dim in enumerate(dims):
        size *= dim // block if i == 0 else dim
        if size > MAX_TENSOR_BYTES:
            return None
    return size
