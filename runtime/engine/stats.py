"""What the engine placed, counted from the tensors it holds (`OffloadHandle.stats`)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class OffloadStats:
    """Bytes the engine placed, counted from the tensors it actually holds."""

    device: str
    resident_blocks: int
    streamed_blocks: int
    resident_bytes: int  # resident blocks' tensors on the device
    non_block_bytes: int  # embedders, norms, projections on the device
    ring_bytes: int  # all slots of the ring
    slots: int
    pinned_bytes: int  # streamed blocks' host buffers allocated as pinned
    pageable_bytes: int  # streamed blocks' host buffers in pageable memory
    adapter_bytes: int = 0  # LoRA weights among the above (resident, non-block or packed)
    disk_bytes: int = 0  # disk-tier blocks' pack file (aligned extents)
    staging_bytes: int = 0  # the disk reader's staging buffers (host RAM, pinned on CUDA)
    direct_io: bool | None = None  # the pack file is read with O_DIRECT; None: no disk tier

    @property
    def device_weight_bytes(self) -> int:
        return self.resident_bytes + self.non_block_bytes + self.ring_bytes

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "device_weight_bytes": self.device_weight_bytes}
