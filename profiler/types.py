"""What a profile holds: the machine, the bus, and every block's cost at one workload.

Frozen dataclasses, shared by the profiler (which makes them), the store (which saves them)
and the planner (which plans from them). Units are in the field names: bytes, ms, GB/s
(10**9 bytes per second, as bandwidth is quoted everywhere).
"""

from __future__ import annotations

import dataclasses

from runtime.dtypes import DType
from runtime.workload import Workload


@dataclasses.dataclass(frozen=True)
class MachineFacts:
    fingerprint: str  # stable id of this machine + device (hash of host and device identity)
    hostname: str
    gpu_name: str  # as the driver reports it ("NVIDIA GeForce RTX 4060"); "cpu" on CPU
    gpu_memory_bytes: int
    pcie_gen: int | None
    pcie_width: int | None
    pcie_gen_max: int | None
    pcie_width_max: int | None
    driver: str | None
    cuda: str | None
    torch: str
    host_ram_bytes: int


@dataclasses.dataclass(frozen=True)
class BandwidthPoint:
    size_bytes: int
    pinned_gbps: float
    pageable_gbps: float


# The disk a reference machine streams its disk tier from: a PCIe Gen3 x4 NVMe drive, 3.5 GB/s
# sequential read (Samsung 970 EVO Plus data sheet); a Gen4 x4 drive reads 7.0 GB/s (Samsung
# 980 PRO data sheet). Planning with the Gen3 figure never promises a step a common drive
# cannot feed; a profile measured on the machine (`profiler.disk`) replaces it.
REFERENCE_DISK_GBPS = 3.5


@dataclasses.dataclass(frozen=True)
class Bandwidth:
    pinned_gbps: float  # large pinned copies, device idle
    pageable_gbps: float  # large pageable copies
    pinned_under_compute_gbps: float  # pinned copies while a compute kernel runs: what we plan with
    copy_overhead_us: float  # fixed cost per copy call
    by_size: tuple[BandwidthPoint, ...] = ()
    # cold sequential direct-I/O reads of the weights' disk, block-sized, at the disk reader's
    # queue depth; None: not measured (a profile from before the disk tier): REFERENCE_DISK_GBPS
    disk_read_gbps: float | None = None
    disk_read_under_copy_gbps: float | None = None  # the same while host-to-device copies run

    @property
    def disk_gbps(self) -> float:
        """What the disk tier is planned with: reads while the copies run, where measured."""
        return self.disk_read_under_copy_gbps or self.disk_read_gbps or REFERENCE_DISK_GBPS


@dataclasses.dataclass(frozen=True)
class BlockProfile:
    name: str
    kind: str
    index: int  # execution order
    bytes: int  # storage bytes (matches the inventory)
    compute_ms: float  # one forward at the workload, compute dtype
    cast_ms: float  # on-device cast of the storage dtype to the compute dtype (0 if none)
    activation_bytes: int  # peak memory the forward allocates beyond its weights


@dataclasses.dataclass(frozen=True)
class Profile:
    machine: MachineFacts
    device: str  # "cuda:0", "cpu"
    model_id: str
    workload: Workload
    storage_dtype: DType
    compute_dtype: DType
    bandwidth: Bandwidth
    blocks: tuple[BlockProfile, ...]
    non_block_ms: float  # embedders, norm_out, proj_out per forward
    non_block_bytes: int
    workspace_bytes: int  # allocator bytes beside weights and activation: carried tensors, cuBLAS workspaces
    is_estimate: bool  # True for reference profiles made from spec sheets
    source: str  # "measured on <device>" or the spec sheet a reference came from
    tool_version: str
    created: str  # ISO 8601
    id: int | None = None  # set once stored
    # resident memory of the process before any weight (Python, torch, the device context),
    # measured by the profiler; None: not measured (planner.host_peak states a figure)
    host_baseline_bytes: int | None = None

    @property
    def activation_peak_bytes(self) -> int:
        return max((b.activation_bytes for b in self.blocks), default=0)

    @property
    def compute_ms(self) -> float:
        return sum(b.compute_ms for b in self.blocks) + self.non_block_ms

    def with_id(self, profile_id: int) -> "Profile":
        return dataclasses.replace(self, id=profile_id)
