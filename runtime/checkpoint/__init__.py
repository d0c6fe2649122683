"""Local checkpoints read header first: safetensors headers, diffusers folders, block maps.

Nothing here reads tensor data; torch is not imported.
"""

from runtime.checkpoint.header import Header, TensorInfo, read_header
from runtime.checkpoint.inspect import BlockReport, CheckpointReport, Naming, inspect_checkpoint

__all__ = [
    "BlockReport",
    "CheckpointReport",
    "Header",
    "Naming",
    "TensorInfo",
    "inspect_checkpoint",
    "read_header",
]
