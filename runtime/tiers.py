"""The disk tier's sizes, shared by the engine (`runtime.engine.disk_tier`) and the planner's
host-memory model (`planner.host_peak`), which must agree on them byte for byte."""

from __future__ import annotations

ALIGN = 4096  # offsets and lengths of direct I/O: a multiple of any disk's logical block size
DEFAULT_STAGING = 2  # staging buffers: one being read while the other is copied


def align(n: int) -> int:
    """`n` rounded up to ALIGN."""
    return -(-n // ALIGN) * ALIGN


def staging_bytes(disk_block_bytes) -> int:
    """The reader's staging ring for disk-tier blocks of these sizes (0 with none on disk)."""
    largest = max(disk_block_bytes, default=0)
    return DEFAULT_STAGING * align(largest) if largest else 0
