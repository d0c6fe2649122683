"""Packing: a block's tensors laid out back to back, one flat buffer per device dtype.

The layout is fixed (parameters in `named_parameters` order, then buffers), so the host
buffer, every ring slot and the views into them agree. Sizes per dtype group are exactly
`runtime.inventory.device_bytes_by_dtype` of the block: fp8 tensors become the compute dtype
when cast on the host (`pre`), everything else keeps its storage dtype. Quantized matrices
(`runtime.engine.quantized`) are one more group of packed bytes named by their quant type, or
dequantized into the compute dtype on the host (`pre`), their packed bytes kept for `restore`.

Where a block's tensors sit on the host at one common offset from a 64-byte line (a
safetensors file puts every tensor 8 + header bytes from the file's start, and a pipeline
loaded on the CPU computes from there), `Layout.phase` records it, and a ring on the CPU
places the block's views at that same offset: CPU GEMM kernels take other paths for operands
that are not 16-byte aligned, so the streamed block computes exactly what the plain model
computes where it sits (`runtime.engine.ring`). A block whose tensors disagree (pruned or
converted tensors beside loaded ones) starts on the line, as on a CUDA device, where the plain
model's tensors are fresh allocations.
"""

from __future__ import annotations

import dataclasses

import torch

from runtime.dtypes import DType
from runtime.engine.casting import is_fp8
from runtime.engine.quantized import host_dequantized, quant_info


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor of a block: where it sits in its dtype group and what it was."""

    tensor: torch.Tensor  # the nn.Parameter or buffer object itself (identity is kept)
    group: str  # device dtype name, e.g. "bf16"
    offset: int  # elements from the start of the group
    numel: int
    shape: tuple[int, ...]
    orig_dtype: torch.dtype
    orig_device: torch.device
    original: torch.Tensor | None = None  # packed bytes of a matrix dequantized on the host


LINE_BYTES = 64  # the alignment a fresh allocation has (torch's CPU allocator, CUDA's is more)


@dataclasses.dataclass(frozen=True)
class Layout:
    entries: tuple[Entry, ...]
    numel_by_group: dict[str, int]
    # per group: elements past a 64-byte line the block's host tensors all started at (none: 0)
    phase: dict[str, int] = dataclasses.field(default_factory=dict)

    def bytes_by_group(self) -> dict[str, int]:
        return {g: n * DType(g).element_size for g, n in self.numel_by_group.items()}

    @property
    def bytes(self) -> int:
        return sum(self.bytes_by_group().values())


def unique_tensors(module) -> list[torch.Tensor]:
    """Parameters then buffers of `module`, each once, in a fixed order."""
    seen: set[int] = set()
    out = []
    for tensor in list(module.parameters()) + list(module.buffers()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out.append(tensor)
    return out


def device_dtype(dtype: torch.dtype, cast_on_host: bool, compute: torch.dtype) -> torch.dtype:
    """The dtype a stored tensor has on the device."""
    if cast_on_host and is_fp8(dtype):
        return compute
    return dtype


def layout_of(module, cast_on_host: bool, compute: torch.dtype) -> Layout:
    entries = []
    numel_by_group: dict[str, int] = {}
    for tensor in unique_tensors(module):
        info = quant_info(tensor)
        original, shape = None, tuple(tensor.shape)
        if info is not None and cast_on_host:
            group, original, shape = DType.from_torch(compute).value, tensor.data, info.shape
        elif info is not None:
            group = info.dtype.value
        else:
            group = DType.from_torch(device_dtype(tensor.dtype, cast_on_host, compute)).value
        offset = numel_by_group.get(group, 0)
        numel = 1
        for d in shape:
            numel *= d
        entries.append(
            Entry(tensor, group, offset, numel, shape, tensor.dtype, tensor.device, original)
        )
        numel_by_group[group] = offset + numel
    return Layout(tuple(entries), numel_by_group, _phases(entries, numel_by_group))


def _phases(entries: list[Entry], numel_by_group: dict[str, int]) -> dict[str, int]:
    """Per group, the elements past a 64-byte line at which the group's tensors, laid back to
    back, would sit where they sit now on the host; only groups kept in their stored dtype
    whose tensors agree on it."""
    out = {}
    for group in numel_by_group:
        size = DType(group).element_size
        members = [e for e in entries if e.group == group and e.numel]
        if not members or any(e.original is not None or e.orig_dtype != DType(group).torch()
                              or e.orig_device.type != "cpu" for e in members):
            continue
        found = {(e.tensor.data_ptr() - e.offset * size) % LINE_BYTES for e in members}
        if len(found) == 1 and (phase := found.pop()) % size == 0 and phase:
            out[group] = phase // size
    return out


def empty_group_buffers(numel_by_group: dict[str, int], device, *, pinned: bool = False):
    """One flat tensor per dtype group, on `device` (host buffers may be pinned)."""
    from runtime.engine.host_memory import host_empty

    out = {}
    for group, numel in numel_by_group.items():
        dtype = DType(group).torch()
        if torch.device(device).type == "cpu":
            out[group] = host_empty(numel, dtype, pinned)
        else:
            out[group] = torch.empty(numel, dtype=dtype, device=device)
    return out


def views(layout: Layout, buffers: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """One view per entry into `buffers`, shaped like the tensor it stands for."""
    return [
        buffers[e.group].narrow(0, e.offset, e.numel).view(e.shape) for e in layout.entries
    ]


def pack_host(
    layout: Layout, pinned: bool, device: torch.device | None = None
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Copy (and cast) the block's tensors into fresh host buffers; point them at the copies.

    The original storage is released as each tensor's `.data` moves to its host view. Pinned
    buffers for a CUDA `device` are exact-size mappings page-locked after the copy filled them
    (`host_memory.page_lock`); where that is refused, PyTorch's pinned allocator holds them.
    """
    from runtime.engine import host_memory

    lock = pinned and device is not None and device.type == "cuda" and host_memory.can_page_lock()
    pages = []
    if lock:
        buffers = {}
        for group, numel in layout.numel_by_group.items():
            buffers[group], one = host_memory.lockable_empty(numel, DType(group).torch())
            pages.append(one)
    else:
        buffers = empty_group_buffers(layout.numel_by_group, "cpu", pinned=pinned)
    host_views = views(layout, buffers)
    for entry, view in zip(layout.entries, host_views):
        if entry.original is not None:
            view.copy_(host_dequantized(entry.tensor, view.dtype))
        else:
            view.copy_(entry.tensor.data)
        entry.tensor.data = view
    if lock and not all([host_memory.page_lock(one, device) for one in pages]):
        buffers = {group: buffer.pin_memory() for group, buffer in buffers.items()}
        host_views = views(layout, buffers)
        bind(layout, host_views)
    return buffers, host_views


def bind(layout: Layout, targets: list[torch.Tensor]) -> None:
    """Point every tensor of the block at `targets` (views into a slot or the host pack)."""
    for entry, target in zip(layout.entries, targets):
        entry.tensor.data = target


def restore(layout: Layout, sources: list[torch.Tensor]) -> None:
    """Give every tensor its own storage again, in its original dtype and device."""
    for entry, source in zip(layout.entries, sources):
        if entry.original is not None:
            entry.tensor.data = entry.original
            continue
        entry.tensor.data = source.to(
            device=entry.orig_device, dtype=entry.orig_dtype, copy=True
        )
