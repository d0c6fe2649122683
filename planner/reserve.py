"""What a VRAM budget leaves for the plan: the budget means what the card gives the process.

A plan's peak (`CostModel.peak_bytes`) is what torch's allocator holds at its peak. The card
holds more than that: the CUDA context and whatever other processes use sit outside the
allocator. So the allocator may hold at most

    usable = min(budget, available) x (1 - ALLOCATOR_MARGIN)

- available, tuning on the machine the profile was measured on: free memory now plus what this
  process's allocator already reserved (`torch.cuda.mem_get_info`), i.e. the card less the
  context and other processes, as they are when the tuning runs;
- available, a reference GPU or a profile of another machine: the card's memory less
  CONTEXT_MARGIN_BYTES, a stated margin for the CUDA context (the H100 run measured 661 MB
  outside the allocator: context, cuBLAS/cuDNN handles and kernels loaded);
- available on a CPU profile: unlimited, and no margin (host RAM is budgeted elsewhere);
- ALLOCATOR_MARGIN keeps room for the CUDA caching allocator's rounding and fragmentation.

A budget of 16 GiB on an 80 GiB card is then 16 GiB for the allocator (what
`torch.cuda.set_per_process_memory_fraction` gives it); on a 16 GiB card it is 16 GiB less the
context.
"""

from __future__ import annotations

import math

CONTEXT_MARGIN_BYTES = 640 * 2**20
ALLOCATOR_MARGIN = 0.02


def available_bytes(profile) -> float:
    """Device bytes the allocator could hold at most on the profile's card (see module doc)."""
    if profile.device == "cpu":
        return math.inf
    if profile.is_estimate:  # a reference GPU ("reference:<id>")
        return max(0, profile.machine.gpu_memory_bytes - CONTEXT_MARGIN_BYTES)
    if not profile.device.startswith("cuda"):
        return math.inf
    live = _live_available(profile)
    if live is not None:
        return live
    return max(0, profile.machine.gpu_memory_bytes - CONTEXT_MARGIN_BYTES)


def usable_bytes(budget_bytes: int, available: float) -> int:
    if math.isinf(available):  # no CUDA allocator to leave a margin for
        return budget_bytes
    return int(min(budget_bytes, available) * (1 - ALLOCATOR_MARGIN))


def budget_needed(peak_bytes: int, available: float) -> int | None:
    """The smallest budget whose usable bytes hold `peak_bytes`; None where the card cannot."""
    if math.isinf(available):
        return peak_bytes
    budget = math.ceil(peak_bytes / (1 - ALLOCATOR_MARGIN))
    while int(budget * (1 - ALLOCATOR_MARGIN)) < peak_bytes:  # int() rounding
        budget += 1
    return budget if usable_bytes(budget, available) >= peak_bytes else None


def _live_available(profile) -> int | None:
    """Free plus already-reserved bytes on this machine's card, if it is the profile's card."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = int(profile.device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        return None
    props = torch.cuda.get_device_properties(index)
    if props.name != profile.machine.gpu_name or int(props.total_memory) != profile.machine.gpu_memory_bytes:
        return None
    free, _ = torch.cuda.mem_get_info(index)
    return int(free + torch.cuda.memory_reserved(index))
