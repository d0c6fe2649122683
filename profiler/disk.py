"""Disk read bandwidth of the disk tier: cold, sequential, direct I/O, as the reader reads.

A scratch file is written in the directory the disk tier packs into (`runtime.engine.
disk_tier.pack_dir`, the user cache), flushed and dropped from the page cache, then read back
the way `DiskReader` reads a pack: one thread, one block-sized `preadv` at a time (queue depth
1) into a page-aligned staging buffer, with `O_DIRECT` where the filesystem takes it. The
second figure repeats the reads while another thread copies host-to-device (a host memcpy on
CPU) as the ring does during a step: that is what the planner plans with. The file is deleted.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
import time
from pathlib import Path

from runtime.engine.disk_tier import drop_cached, open_direct, pack_dir
from runtime.engine.host_memory import lockable_empty
from runtime.tiers import align

MIB = 2**20
MIN_FILE_BYTES = 16 * MIB
MAX_FILE_BYTES = 512 * MIB  # enough to leave the drive's own cache; small enough to be quick


@dataclasses.dataclass(frozen=True)
class DiskBandwidth:
    read_gbps: float  # cold sequential direct reads, device idle
    read_under_copy_gbps: float  # the same while host-to-device copies run
    block_bytes: int  # bytes a read asks for
    file_bytes: int
    direct: bool  # O_DIRECT was used (False: buffered reads dropped from the cache after)
    directory: str


def measure_disk(device, block_bytes: int, directory: Path | None = None,
                 file_bytes: int | None = None) -> DiskBandwidth:
    """Read bandwidth of the disk under `directory` in reads of `block_bytes` (rounded up to
    the direct-I/O alignment), idle and while copies to `device` run."""
    directory = Path(directory or pack_dir())
    directory.mkdir(parents=True, exist_ok=True)
    block = align(max(block_bytes, 1))
    size = file_bytes or min(MAX_FILE_BYTES, max(MIN_FILE_BYTES, 4 * block))
    size = max(block, size // block * block)
    fd, name = tempfile.mkstemp(prefix="disk-bandwidth-", dir=directory)
    path = Path(name)
    try:
        _write(fd, size)
        read_fd, direct = open_direct(path)
        try:
            staging, pages = lockable_empty(block, _uint8())
            idle = _read_all(read_fd, pages, block, size, direct)
            with _copies(device, block):
                busy = _read_all(read_fd, pages, block, size, direct)
        finally:
            os.close(read_fd)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return DiskBandwidth(idle, busy, block, size, direct, str(directory))


def _uint8():
    import torch

    return torch.uint8


def _write(fd: int, size: int) -> None:
    chunk = os.urandom(min(size, 4 * MIB))  # incompressible: no drive may shortcut it
    done = 0
    while done < size:
        done += os.write(fd, chunk[: size - done])
    os.fsync(fd)
    drop_cached(fd, 0, size)


def _read_all(fd: int, pages, block: int, size: int, direct: bool) -> float:
    """GB/s of reading the whole file cold, block by block."""
    drop_cached(fd, 0, size)
    view = memoryview(pages)
    start = time.perf_counter()
    for offset in range(0, size, block):
        n = os.preadv(fd, [view[: min(block, size - offset)]], offset)
        if n <= 0:
            raise OSError(f"short read at {offset} while measuring the disk")
        if not direct:
            drop_cached(fd, offset, n)
    return size / (time.perf_counter() - start) / 1e9


class _copies:
    """Host-to-device copies of one block, back to back, in a thread while the body runs."""

    def __init__(self, device, block: int) -> None:
        import torch

        self.device = torch.device(device)
        self.src = torch.ones(block, dtype=torch.uint8, pin_memory=self.device.type == "cuda")
        self.dst = torch.empty(block, dtype=torch.uint8, device=self.device)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import torch

        while not self.stop.is_set():
            self.dst.copy_(self.src, non_blocking=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
