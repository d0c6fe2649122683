"""Host memory of a whole run, phase by phase, and the tier of each streamed block.

`planner apply` (runtime.generate) runs a plan in this order, and each phase holds:

    encode   baseline + text encoders (the pipeline's checkpoints are memory-mapped; only
             what is read is resident, and the text encoders are read whole, then dropped)
    load     baseline + RAM-tier packs + disk staging ring + the largest streamed block once
             more (its mapped pages while it is packed or written to the pack file); a model
             already whole in host memory (built in the process, `in_memory_bytes`) holds all
             of it and one block's pack more, as each block's pack replaces its original
    denoise  baseline + RAM-tier packs + disk staging ring
    switch   (two experts) baseline + the first expert restored whole to host memory (its
             plan is removed, it is parked) + the second expert's packs, staging and one block
    decode   baseline + VAE (the transformer is dropped before the decode)

On a CPU profile the "device" is host memory too: the device peak the cost model predicts
(resident blocks, non-block modules, ring slots, activations) is added to load and denoise.
Pinned and pageable packs count alike: both are RAM. A disk-tier block holds no host RAM
between its uses, only a staging buffer while it is read (`runtime.engine.disk_tier`).

The baseline is the process before any weight: measured by the profiler on this machine
(`Profile.host_baseline_bytes`), or REFERENCE_BASELINE_BYTES for a reference GPU.
"""

from __future__ import annotations

import dataclasses
import enum

from runtime.tiers import staging_bytes

# `--host-ram` is a machine's RAM, so the baseline holds what runs before any weight: a desktop
# OS idle (~1.5 GiB) and this process, Python with torch and a CUDA context (~1.5 GiB RSS):
# the "2-3 GB before any weight" users report. Where the limit is what this machine has
# available now (MemAvailable), the OS is already out of it: the process alone counts, as the
# profiler measured it (or the stated figure).
OS_BASELINE_BYTES = 3 << 29
PROCESS_BASELINE_BYTES = 3 << 29
REFERENCE_BASELINE_BYTES = OS_BASELINE_BYTES + PROCESS_BASELINE_BYTES


def stated_baseline(measured: int | None) -> tuple[int, str]:
    """(baseline bytes, how they are known) of the OS and the process: the OS stated and the
    process as the profiler measured it, or both stated."""
    if measured:
        return OS_BASELINE_BYTES + measured, "OS stated, process measured"
    return REFERENCE_BASELINE_BYTES, "OS and process, stated"


class Phase(str, enum.Enum):
    ENCODE = "encode"
    LOAD = "load"
    DENOISE = "denoise"
    SWITCH = "switch"
    DECODE = "decode"


@dataclasses.dataclass(frozen=True)
class HostParts:
    """What the run holds beside the streamed packs."""

    baseline_bytes: int
    text_encoder_bytes: int
    vae_bytes: int
    parked_expert_bytes: int = 0  # two experts: the first one's bytes restored at the switch
    device_bytes: int = 0  # a CPU profile: the device peak (it is host memory); else 0
    in_memory_bytes: int = 0  # the model's weights in host memory before the plan is applied
    baseline_source: str = ""


@dataclasses.dataclass(frozen=True)
class Streamed:
    """One transformer's streamed blocks in stream order: host bytes in their cast, and tier."""

    sizes: tuple[int, ...]
    on_disk: tuple[bool, ...]

    @property
    def ram_bytes(self) -> int:
        return sum(s for s, d in zip(self.sizes, self.on_disk) if not d)

    @property
    def disk_bytes(self) -> int:
        return sum(s for s, d in zip(self.sizes, self.on_disk) if d)

    @property
    def staging_bytes(self) -> int:
        return staging_bytes([s for s, d in zip(self.sizes, self.on_disk) if d])

    @property
    def largest(self) -> int:
        return max(self.sizes, default=0)


@dataclasses.dataclass(frozen=True)
class HostPeak:
    phases: tuple[tuple[Phase, int], ...]
    ram_pack_bytes: int
    disk_bytes: int
    staging_bytes: int

    @property
    def peak_bytes(self) -> int:
        return max(b for _, b in self.phases)

    @property
    def peak_phase(self) -> Phase:
        return max(self.phases, key=lambda p: p[1])[0]

    def to_dict(self) -> dict:
        return {
            "peak_bytes": self.peak_bytes, "peak_phase": self.peak_phase.value,
            "phases": {p.value: b for p, b in self.phases}, "ram_pack_bytes": self.ram_pack_bytes,
            "disk_bytes": self.disk_bytes, "staging_bytes": self.staging_bytes,
        }


def host_peak(parts: HostParts, first: Streamed, second: Streamed | None = None) -> HostPeak:
    """Host bytes of each phase of a run (see the module doc)."""
    base = parts.baseline_bytes
    held = first.ram_bytes + first.staging_bytes
    phases = [
        (Phase.ENCODE, base + parts.text_encoder_bytes),
        (Phase.LOAD, base + first.largest + (parts.in_memory_bytes or held + parts.device_bytes)),
        (Phase.DENOISE, base + held + parts.device_bytes),
    ]
    disk, staging = first.disk_bytes, first.staging_bytes
    if second is not None:
        phases.append((Phase.SWITCH, base + parts.parked_expert_bytes + second.ram_bytes
                       + second.staging_bytes + second.largest + parts.device_bytes))
        disk, staging = max(disk, second.disk_bytes), max(staging, second.staging_bytes)
    phases.append((Phase.DECODE, base + parts.vae_bytes))
    return HostPeak(tuple(phases), first.ram_bytes, disk, staging)


class TierOrder(str, enum.Enum):
    """Which streamed blocks go to the disk tier first."""

    LARGEST = "largest"  # the fewest blocks: the largest first
    SPREAD = "spread"  # evenly through the stream: each read has RAM-tier copies around it


def fit_tiers(sizes: tuple[int, ...], room: int, order: TierOrder = TierOrder.LARGEST) -> tuple[bool, ...] | None:
    """Disk tier for the first streamed blocks in `order` that bring RAM packs plus the staging
    ring within `room`; all in RAM where they fit; None where not even all on disk fits."""
    on_disk = [False] * len(sizes)
    order = _order(sizes, order)
    for count in range(len(sizes) + 1):
        for i in order[:count]:
            on_disk[i] = True
        s = Streamed(sizes, tuple(on_disk))
        if s.ram_bytes + s.staging_bytes <= room:
            return tuple(on_disk)
    return None


def _order(sizes: tuple[int, ...], order: TierOrder) -> list[int]:
    if order is TierOrder.LARGEST:
        return sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    bits = max(1, (len(sizes) - 1).bit_length())  # bit-reversed positions: any prefix is spread
    return sorted(range(len(sizes)), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2))


def place(parts: HostParts, limit: int, first: tuple[int, ...],
          second: tuple[int, ...] | None = None,
          order: TierOrder = TierOrder.LARGEST) -> tuple[HostPeak, Streamed, Streamed | None] | None:
    """The tiers that keep every phase within `limit` host bytes, RAM first; None if none do.
    `first`/`second`: each expert's streamed host bytes in stream order."""
    base = parts.baseline_bytes
    fixed = [base + parts.text_encoder_bytes, base + parts.vae_bytes]
    if max(fixed) > limit:
        return None
    one = _fit(first, limit - base - max(first, default=0) - parts.device_bytes, order)
    if one is None:
        return None
    two = None
    if second is not None:
        two = _fit(second, limit - base - parts.parked_expert_bytes - max(second, default=0)
                   - parts.device_bytes, order)
        if two is None:
            return None
    peak = host_peak(parts, one, two)
    return (peak, one, two) if peak.peak_bytes <= limit else None


def _fit(sizes: tuple[int, ...], room: int, order: TierOrder) -> Streamed | None:
    if room < 0:
        return None
    on_disk = fit_tiers(tuple(sizes), room, order)
    return Streamed(tuple(sizes), on_disk) if on_disk is not None else None


def all_on_disk(sizes: tuple[int, ...]) -> Streamed:
    return Streamed(tuple(sizes), tuple(True for _ in sizes))
