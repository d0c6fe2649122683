"""The disk tier: streamed blocks whose packs live in a file, read each use with direct I/O.

A disk-tier block is packed like a RAM-tier one (`runtime.engine.packing`: one buffer per
device dtype), but its groups are written once into a pack file in the user cache, each at an
ALIGN-aligned offset, and its tensors then point at a memory mapping of that file: between
uses every parameter still holds its own values, and no anonymous host memory holds them (the
mapping's pages come into the page cache only if someone reads the parameters on the host).

Each use, a reader thread reads the block's whole extent with one `preadv` on a file opened
with `O_DIRECT` (no page cache refilled with the bytes the tier exists to keep out of RAM)
into one of a small ring of staging buffers: page-aligned anonymous mappings, page-locked for
a CUDA device. The ring (`runtime.engine.ring`) copies the staging buffer into its device slot
on its copy stream, records an event, and hands the buffer back; the reader waits for that
event before it reads into the buffer again. Where the filesystem refuses `O_DIRECT` (tmpfs,
some network filesystems) the file is read through the page cache and each extent dropped from
it after the read (`POSIX_FADV_DONTNEED`).

Reads follow the disk-tier blocks in stream order, cyclically, `staging` reads ahead of the
copies; a use out of turn (the ring's resync) skips reads until the block wanted comes up.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import queue
import tempfile
import threading
from pathlib import Path

import torch

from runtime.dtypes import DType
from runtime.engine import host_memory, packing
from runtime.tiers import ALIGN, DEFAULT_STAGING, align


def pack_dir() -> Path:
    """Where pack files are written: the user cache (PLANNER_DISK_TIER_DIR overrides it)."""
    from platformdirs import user_cache_dir

    return Path(os.environ.get("PLANNER_DISK_TIER_DIR") or Path(user_cache_dir("offload-planner")) / "disk-tier")


@dataclasses.dataclass(frozen=True)
class Extent:
    """One block in the pack file: where it starts, its aligned length, each group's offset."""

    offset: int
    length: int  # a multiple of ALIGN
    groups: tuple[tuple[str, int, int], ...]  # (group, byte offset within the extent, numel)


def extents_of(layouts: list[packing.Layout]) -> list[Extent]:
    out, at = [], 0
    for layout in layouts:
        groups, inner = [], 0
        for group, numel in layout.numel_by_group.items():
            groups.append((group, inner, numel))
            inner = align(inner + numel * DType(group).element_size)
        out.append(Extent(at, max(inner, ALIGN), tuple(groups)))
        at += max(inner, ALIGN)
    return out


class PackFile:
    """The disk-tier blocks' packs, written once per apply and deleted on remove."""

    def __init__(self, layouts: list[packing.Layout], directory: Path | None = None) -> None:
        directory = directory or pack_dir()
        directory.mkdir(parents=True, exist_ok=True)
        self.extents = extents_of(layouts)
        self.nbytes = sum(e.length for e in self.extents)
        fd, name = tempfile.mkstemp(prefix="pack-", suffix=".bin", dir=directory)
        self.path = Path(name)
        self._fd = fd
        os.ftruncate(fd, self.nbytes)
        self._mapped: torch.Tensor | None = None
        self.direct = False
        self._read_fd: int | None = None

    def write(self, j: int, layout: packing.Layout) -> list[torch.Tensor]:
        """Write block `j`'s tensors (cast as the layout says) and point them at the file."""
        extent = self.extents[j]
        where = {group: extent.offset + inner for group, inner, _ in extent.groups}
        for entry in layout.entries:
            dtype = DType(entry.group).torch()
            data = entry.tensor.data if entry.original is None else packing.host_dequantized(entry.tensor, dtype)
            data = data.to(device="cpu", dtype=dtype).contiguous().reshape(-1)
            offset = where[entry.group] + entry.offset * DType(entry.group).element_size
            os.pwrite(self._fd, data.view(torch.uint8).numpy(), offset)
        return self.views(j, layout)

    def seal(self) -> None:
        """Everything is written: flush it, drop it from the page cache, open the reader."""
        os.fsync(self._fd)
        drop_cached(self._fd, 0, self.nbytes)
        self._read_fd, self.direct = open_direct(self.path)

    def views(self, j: int, layout: packing.Layout) -> list[torch.Tensor]:
        """Each tensor of block `j` as a view of the file's mapping."""
        if self._mapped is None:
            self._mapped = torch.from_file(str(self.path), shared=True, size=self.nbytes, dtype=torch.uint8)
        extent = self.extents[j]
        buffers = {
            group: self._mapped.narrow(0, extent.offset + inner, numel * DType(group).element_size)
            .view(DType(group).torch())
            for group, inner, numel in extent.groups
        }
        return packing.views(layout, buffers)

    def read(self, j: int, into: mmap.mmap) -> None:
        """Block `j`'s extent into the staging buffer `into` (page-aligned, large enough)."""
        extent = self.extents[j]
        view = memoryview(into)[: extent.length]
        done = 0
        while done < extent.length:
            n = os.preadv(self._read_fd, [view[done:]], extent.offset + done)
            if n <= 0:
                raise OSError(f"short read of the disk-tier pack {self.path} at {extent.offset + done}")
            done += n
        if not self.direct:
            drop_cached(self._read_fd, extent.offset, extent.length)

    def close(self) -> None:
        self._mapped = None
        for fd in (self._fd, self._read_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._read_fd = None
        self.path.unlink(missing_ok=True)


def open_direct(path: Path) -> tuple[int, bool]:
    """A read-only descriptor with O_DIRECT, or a plain one where the filesystem refuses it."""
    flag = getattr(os, "O_DIRECT", 0)
    if flag:
        try:
            fd = os.open(path, os.O_RDONLY | flag)
            probe = mmap.mmap(-1, ALIGN, flags=mmap.MAP_PRIVATE)
            os.preadv(fd, [probe], 0)  # some filesystems accept the flag but fail the read
            return fd, True
        except OSError:
            try:
                os.close(fd)
            except (OSError, UnboundLocalError):
                pass
    return os.open(path, os.O_RDONLY), False


def drop_cached(fd: int, offset: int, length: int) -> None:
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


class Staging:
    """A staging buffer: a page-aligned anonymous mapping and the uint8 tensor over it."""

    def __init__(self, nbytes: int, device: torch.device) -> None:
        self.tensor, self.pages = host_memory.lockable_empty(nbytes, torch.uint8)
        self.locked = device.type == "cuda" and host_memory.can_page_lock() and host_memory.page_lock(self.pages, device)
        self.copied: torch.cuda.Event | None = None  # recorded after the copy out of it

    def groups(self, extent: Extent) -> dict[str, torch.Tensor]:
        """The block's groups in this buffer, as the ring copies them to its slot."""
        return {
            group: self.tensor.narrow(0, inner, numel * DType(group).element_size).view(DType(group).torch())
            for group, inner, numel in extent.groups
        }


class DiskReader:
    """The reader thread and its staging ring for the disk-tier blocks of one ring."""

    def __init__(self, pack: PackFile, streamed_index: list[int], device: torch.device,
                 staging: int = DEFAULT_STAGING) -> None:
        self.pack = pack
        # the ring's streamed-block index of each extent: the ring asks by that index
        self.order = list(streamed_index)
        self._extent = {j: k for k, j in enumerate(self.order)}
        largest = max(e.length for e in pack.extents)
        self.staging = [Staging(largest, torch.device(device)) for _ in range(max(1, staging))]
        self._free: queue.Queue = queue.Queue()
        self._ready: queue.Queue = queue.Queue()
        for s in self.staging:
            self._free.put(s)
        self._stop = threading.Event()
        self._taken: Staging | None = None
        self.reads = 0
        self.read_s = 0.0
        self._thread = threading.Thread(target=self._run, name="disk-tier-reader", daemon=True)
        self._thread.start()

    @property
    def staging_bytes(self) -> int:
        return sum(s.tensor.numel() for s in self.staging)

    def _run(self) -> None:
        import time

        k = 0
        while not self._stop.is_set():
            s = self._free.get()
            if s is None:
                return
            if s.copied is not None:
                s.copied.synchronize()  # the copy out of it finished: it may be overwritten
                s.copied = None
            j = self.order[k % len(self.order)]
            try:
                start = time.perf_counter()
                self.pack.read(self._extent[j], s.pages)
                self.read_s += time.perf_counter() - start
                self.reads += 1
            except BaseException as e:  # handed to the consumer, who raises it
                self._ready.put((j, s, e))
                return
            self._ready.put((j, s, None))
            k += 1

    def holds(self, j: int) -> bool:
        return j in self._extent

    def take(self, j: int) -> dict[str, torch.Tensor]:
        """Streamed block `j`'s groups in the staging buffer its read filled (waiting for it);
        `release` gives the buffer back once its copy is enqueued."""
        while True:
            got, s, error = self._ready.get()
            if error is not None:
                raise error
            if got == j:
                self._taken = s
                return s.groups(self.pack.extents[self._extent[j]])
            self._free.put(s)  # read ahead for a use that did not come (a resync): skip it

    def release(self, copied: "torch.cuda.Event | None" = None) -> None:
        """The buffer last taken may be read into again once `copied` (the copy out of it) ends."""
        s, self._taken = self._taken, None
        s.copied = copied
        self._free.put(s)

    def close(self) -> None:
        self._stop.set()
        self._free.put(None)
        self._thread.join()
        for s in self.staging:
            if s.copied is not None:
                s.copied.synchronize()
        self.staging = []  # a page-locked mapping is unregistered when it is freed
