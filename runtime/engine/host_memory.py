"""Host RAM: how much is available, and how much of the streamed weights may be pinned.

Available host RAM is the smaller of the kernel's `MemAvailable` and the cgroup's room
(limit minus usage, v2 or v1). Pinned (page-locked) memory cannot be swapped, so we pin only
what fits below that minus a safety margin and fall back to pageable memory, with a warning,
for the rest. A plan whose streamed weights do not fit in host RAM at all is refused before
anything is touched.

Pinned packs are not taken from PyTorch's caching host allocator: it rounds every block up to a
power of two (a 680 MB block pins 1 GiB) and keeps what is freed cached and locked after
`remove()`. A pack is instead its own anonymous mapping of exactly its bytes
(`lockable_empty`), filled by the packing copy (which faults its pages in on all threads), then
page-locked where it stands with `cudaHostRegister` (`page_lock`), the mechanism PyTorch's
`pinned_use_cuda_host_register` option uses. The mapping is unregistered when its memory is
freed, whoever frees it last, and never while a copy still reads it: the ring notes the event
of each copy it issues from a mapping (`note_read`), and a mapping freed before that copy
finished is unregistered later (`release_deferred`), without synchronising the device.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import mmap
import os
import weakref
from pathlib import Path

from runtime.errors import PlanMismatchError

SAFETY_MARGIN_BYTES = 2 * 2**30  # left for the OS, the pipeline's other parts, the allocator
_CGROUP_V2 = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current"))
_CGROUP_V1 = (
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)
_NO_LIMIT = 1 << 60  # cgroup v1 writes a huge number for "no limit"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    for limit_path, usage_path in (_CGROUP_V2, _CGROUP_V1):
        limit = _read_int(limit_path)
        usage = _read_int(usage_path)
        if limit is not None and usage is not None and limit < _NO_LIMIT:
            return max(0, limit - usage)
    return None


def available_host_bytes() -> int:
    """Host RAM this process can still use: min(MemAvailable, cgroup limit - usage)."""
    candidates = [v for v in (_meminfo_available(), _cgroup_room()) if v is not None]
    if not candidates:  # no /proc (macOS): what sysconf says is free
        try:
            candidates = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (ValueError, OSError, AttributeError):
            return _NO_LIMIT
    return min(candidates)


@dataclasses.dataclass(frozen=True)
class HostDecision:
    """Which streamed blocks (by position in the streamed list) get pinned buffers."""

    pinned: tuple[bool, ...]
    needed_bytes: int  # host bytes the packs take
    available_bytes: int
    warning: str | None


def decide_host_memory(
    pack_bytes: list[int], freed_bytes: int, want_pinned: bool
) -> HostDecision:
    """Budget the streamed blocks' host buffers against available host RAM.

    `pack_bytes[j]` is the host buffer size of the j-th streamed block; `freed_bytes` are the
    host bytes of the original tensors that applying releases (packs replace them). Packing
    goes block by block, so the peak needs one block more than the net.
    """
    available = available_host_bytes()
    needed = sum(pack_bytes)
    net = needed - freed_bytes + max(pack_bytes, default=0)
    if net > available:
        raise PlanMismatchError(
            f"the plan's streamed blocks need {_gib(net)} more host RAM but only "
            f"{_gib(available)} is available: free host memory or use a plan that streams fewer "
            f"blocks (more VRAM)"
        )
    if not want_pinned:
        return HostDecision(tuple(False for _ in pack_bytes), needed, available, None)
    room = available - SAFETY_MARGIN_BYTES + freed_bytes - max(pack_bytes, default=0)
    pinned = []
    for num_bytes in pack_bytes:
        fits = num_bytes <= room
        pinned.append(fits)
        room -= num_bytes if fits else 0
    warning = None
    if not all(pinned):
        spilled = sum(b for b, p in zip(pack_bytes, pinned) if not p)
        warning = (
            f"pinned host memory limited by available RAM ({_gib(available)} with a "
            f"{_gib(SAFETY_MARGIN_BYTES)} margin): {_gib(spilled)} of streamed weights use "
            f"pageable memory instead, which copies slower"
        )
    return HostDecision(tuple(pinned), needed, available, warning)


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.2f} GiB"


def host_empty(numel: int, dtype, pinned: bool):
    """A flat host tensor; page-locked when `pinned` and CUDA is there to pin it."""
    import torch

    pin = pinned and torch.cuda.is_available()
    return torch.empty(numel, dtype=dtype, device="cpu", pin_memory=pin)


_CUDA_HOST_REGISTER_PORTABLE = 1  # cudaHostRegisterPortable: pinned for every CUDA context


_DEFERRED: list = []  # freed mappings whose last DMA had not finished: unregistered later
_LOCKED: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()  # address -> pages


def note_read(tensor, event) -> None:
    """A copy from `tensor` (a whole mapping from `lockable_empty`) finishes with `event`: the
    mapping is not unregistered before it has."""
    pages = _LOCKED.get(tensor.data_ptr())
    if pages is not None:
        pages.last_read = event


def _release(pages) -> None:
    """Finalizer of a mapping: unregister it before the mapping goes. It never waits for the
    device (it runs wherever the garbage collector does, mid-forward included): where the last
    copy that reads it (`note_read`) has not finished, the mapping is kept alive and
    unregistered by a later release once that copy is done (`release_deferred`)."""
    if "locked_on" not in pages.__dict__:
        return
    event = pages.__dict__.get("last_read")
    if event is not None and not _finished(event):
        _DEFERRED.append(pages)  # keeps the mapping (and the pages it locks) alive
        return
    _unregister(pages)
    release_deferred()


def release_deferred() -> None:
    """Unregister the deferred mappings whose last copy is done."""
    waiting = [p for p in _DEFERRED if not _finished(p.__dict__.get("last_read"))]
    done = [p for p in _DEFERRED if p not in waiting]
    _DEFERRED[:] = waiting
    for pages in done:
        _unregister(pages)


def _finished(event) -> bool:
    try:
        return event is None or event.query()
    except Exception:  # noqa: BLE001 - CUDA gone (interpreter exit): nothing reads any more
        return True


def _unregister(pages) -> None:
    """Errors are ignored (at interpreter exit CUDA may be gone already)."""
    device = pages.__dict__.pop("locked_on", None)
    pages.__dict__.pop("last_read", None)
    if device is None:
        return
    try:
        import torch

        with torch.cuda.device(device):
            torch.cuda.cudart().cudaHostUnregister(ctypes.addressof(pages))
    except Exception:  # noqa: BLE001 - nothing can be done about it in a finalizer
        pass


@functools.lru_cache(maxsize=256)
def _pages_type(nbytes: int) -> type:
    return type("HostPages", (ctypes.c_ubyte * nbytes,), {"__del__": _release})


def lockable_empty(numel: int, dtype):
    """(tensor, pages): a flat host tensor in its own anonymous mapping, page-aligned, of exactly
    its bytes (no page shared with another allocation), which `page_lock` can pin in place.
    The tensor's storage holds `pages`; the mapping is freed with the last view of it."""
    import torch

    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    # private, not the default shared mapping: anonymous memory, not shmem, and never shared
    # with a forked child
    mapping = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE)
    pages = _pages_type(nbytes).from_buffer(mapping)
    return torch.frombuffer(pages, dtype=dtype, count=numel), pages


@functools.lru_cache(maxsize=1)
def can_page_lock() -> bool:
    """CUDA is there and registering host memory works in this process: its runtime bindings
    have the shape we call (checked once, on one page of the current device). PLANNER_PIN=torch
    in the environment turns it off: packs and staging chunks then come from PyTorch's pinned
    allocator, as before page locking in place."""
    import torch

    if os.environ.get("PLANNER_PIN") == "torch":  # escape hatch: PyTorch's pinned allocator
        return False
    if not torch.cuda.is_available() or not hasattr(mmap, "MAP_PRIVATE"):  # Windows: no mmap flags
        return False
    try:
        cudart = torch.cuda.cudart()
    except Exception:  # noqa: BLE001 - a build without the bindings: the caller pins otherwise
        return False
    if not (hasattr(cudart, "cudaHostRegister") and hasattr(cudart, "cudaHostUnregister")):
        return False
    _, probe = lockable_empty(mmap.PAGESIZE, torch.uint8)
    if not page_lock(probe, torch.device("cuda", torch.cuda.current_device())):
        return False
    _release(probe)
    return True


def _succeeded(err) -> bool:
    try:
        return int(err) == 0
    except (TypeError, ValueError):
        return str(err).endswith("success")


def page_lock(pages, device) -> bool:
    """Pin `pages` (from `lockable_empty`) for `device` with cudaHostRegister; False when the
    bindings or the driver refuse (the caller falls back to PyTorch's pinned allocator)."""
    import torch

    if not len(pages):
        return False
    device = torch.device(device)
    with torch.cuda.device(device):
        try:
            err = torch.cuda.cudart().cudaHostRegister(
                ctypes.addressof(pages), len(pages), _CUDA_HOST_REGISTER_PORTABLE
            )
        except (TypeError, RuntimeError):  # bindings of another shape (older torch)
            return False
        if not _succeeded(err):
            _consume_error(device)
            return False
    pages.locked_on = device
    _LOCKED[ctypes.addressof(pages)] = pages
    return True


def _consume_error(device) -> None:
    """A failed runtime call leaves its error as the thread's last CUDA error, which the next
    kernel launch check would report as its own; one tiny launch takes it now."""
    import torch

    try:
        torch.ones(1, device=device).add_(1)
    except RuntimeError:
        pass


def is_page_locked(pages) -> bool:
    return "locked_on" in pages.__dict__
