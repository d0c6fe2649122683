"""Many tensors between host and device through two pinned staging chunks.

Copies between pageable host memory and a GPU run at a fraction of the pinned bandwidth (7 GB/s
against 55 GB/s on the H100 PCIe of `gpu-evidence/h100-2026-11-22`): the driver stages them
through a small pinned buffer of its own, with one CPU thread. Placing resident weights on the
device (apply) and bringing them back (remove) goes through two page-locked chunks of our own
instead: the host side of each piece is a torch copy on all threads (the dtype cast included,
on the host as `Tensor.to` does it), the device side one DMA from or into a chunk, and while one
chunk's DMA runs the other chunk is filled or drained. Each result is a fresh tensor with its
own storage, the dtype asked for and the source's values, as `Tensor.to(device, dtype)` gives.

On CPU the same code runs with unpinned chunks and nothing to wait for, which is how the tests
check it. Non-contiguous and empty tensors take `Tensor.to` directly.
"""

from __future__ import annotations

import torch

CHUNK_BYTES = 64 << 20


class StagingRefused(Exception):
    """The page-locked staging chunks could not be allocated (the caller copies otherwise)."""

_ALIGN = 64  # every piece starts 64-byte aligned in its chunk (any dtype view is legal there)


def worth_staging(tensor: torch.Tensor, device: torch.device) -> bool:
    """A contiguous, non-empty tensor crossing between host and a CUDA device."""
    kinds = {tensor.device.type, torch.device(device).type}
    return kinds == {"cpu", "cuda"} and tensor.numel() > 0 and tensor.is_contiguous()


class _Chunks:
    """Two host chunks (page-locked for CUDA) and, per chunk, the event of its last DMA."""

    def __init__(self, device: torch.device, nbytes: int) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self.nbytes = nbytes
        self.buffers = [self._buffer(nbytes) for _ in range(2)]
        self.events = [torch.cuda.Event() if self.cuda else None for _ in range(2)]
        self.pending: list[list] = [[], []]  # per chunk: drains waiting for its DMA (to_host)

    def _buffer(self, nbytes: int) -> torch.Tensor:
        if not self.cuda:
            return torch.empty(nbytes, dtype=torch.uint8)
        from runtime.engine import host_memory

        if host_memory.can_page_lock():
            buffer, pages = host_memory.lockable_empty(nbytes, torch.uint8)
            buffer.fill_(0)  # fault the pages in on all threads before the driver locks them
            if host_memory.page_lock(pages, self.device):
                return buffer
        try:
            return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        except RuntimeError as err:  # cudaHostAlloc refused: only this means "no pinned memory"
            raise StagingRefused(f"{nbytes} bytes of pinned staging memory refused: {err}") from err

    def record(self, i: int) -> None:
        if self.cuda:
            self.events[i].record(torch.cuda.current_stream(self.device))

    def wait(self, i: int) -> None:
        """The chunk's last DMA is done; its pending host copies are made."""
        if self.cuda:
            self.events[i].synchronize()
        for dst, staged in self.pending[i]:
            dst.copy_(staged)
        self.pending[i] = []

    def finish(self) -> None:
        for i in range(2):
            self.wait(i)


def _pieces(sizes: list[int], chunk_bytes: int):
    """(chunk index, byte offset in it, item, first element, element count) covering every
    item of `sizes` (bytes per element, elements) in order, switching chunks when one is full;
    a chunk change is marked by offset 0."""
    chunk, offset = 0, 0
    for item, (itemsize, numel) in enumerate(sizes):
        start = 0
        while start < numel:
            room = (chunk_bytes - offset) // itemsize
            if room <= 0:
                chunk, offset = 1 - chunk, 0
                continue
            count = min(room, numel - start)
            yield chunk, offset, item, start, count
            offset = -(-(offset + count * itemsize) // _ALIGN) * _ALIGN
            start += count


def _through(chunks: _Chunks, sizes: list[tuple[int, int]]):
    """(chunk index, its byte region, item, first element, element count) of every piece of
    `sizes`, in order. A chunk is waited for before it is filled again (its last DMA done,
    its pending host copies made: for a device copy its previous DMA has read it, for a host
    copy it is drained), and every chunk's DMA is finished once the last piece is through."""
    current = None
    for chunk, offset, item, start, count in _pieces(sizes, chunks.nbytes):
        if chunk != current:
            if current is not None:
                chunks.record(current)
            chunks.wait(chunk)
            current = chunk
        yield chunk, chunks.buffers[chunk].narrow(0, offset, count * sizes[item][0]), item, start, count
    if current is not None:
        chunks.record(current)
    chunks.finish()


def _chunk_bytes(total: int, chunk_bytes: int | None) -> int:
    limit = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    return max(_ALIGN, min(limit, -(-total // _ALIGN) * _ALIGN))


def to_device(sources: list[torch.Tensor], dtypes: list[torch.dtype], device,
              *, chunk_bytes: int | None = None) -> list[torch.Tensor]:
    """Copies of the host tensors `sources` on `device`, the i-th in `dtypes[i]`."""
    device = torch.device(device)
    outs = [torch.empty(s.shape, dtype=d, device=device) for s, d in zip(sources, dtypes)]
    sizes = [(o.element_size(), o.numel()) for o in outs]
    nbytes = _chunk_bytes(sum(a * b for a, b in sizes), chunk_bytes)
    for _, region, item, start, count in _through(_Chunks(device, nbytes), sizes):
        out = outs[item].view(-1)
        staged = region.view(out.dtype)
        staged.copy_(sources[item].reshape(-1).narrow(0, start, count))
        out.narrow(0, start, count).copy_(staged, non_blocking=True)
    return outs


def to_host(sources: list[torch.Tensor], dtypes: list[torch.dtype],
            *, chunk_bytes: int | None = None) -> list[torch.Tensor]:
    """Copies of the device tensors `sources` in host memory, the i-th in `dtypes[i]`."""
    outs = [torch.empty(s.shape, dtype=d, device="cpu") for s, d in zip(sources, dtypes)]
    sizes = [(s.element_size(), s.numel()) for s in sources]
    nbytes = _chunk_bytes(sum(a * b for a, b in sizes), chunk_bytes)
    device = sources[0].device if sources else torch.device("cpu")
    chunks = _Chunks(device, nbytes)
    for chunk, region, item, start, count in _through(chunks, sizes):
        src = sources[item].reshape(-1)
        staged = region.view(src.dtype)
        staged.copy_(src.narrow(0, start, count), non_blocking=True)
        chunks.pending[chunk].append((outs[item].view(-1).narrow(0, start, count), staged))
    return outs
