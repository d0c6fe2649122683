"""What the engine must leave as it found it between forwards, as tests read it.

`block_homes(model, adapter)` notes, for every tensor of every block, the storage its data
lives in (pointer and offset), its dtype and a copy of its values; `moved(homes)` names the
tensors that no longer match: after any forward every parameter must hold its own values in
its own storage (its host view for a streamed block), never a view into a ring slot or a cast
copy, or a `state_dict()` read or an in-place LoRA fuse between forwards sees another block.
"""

from __future__ import annotations


def block_homes(model, adapter) -> list[tuple]:
    homes = []
    for name, _, block in adapter.blocks(model):
        for tname, tensor in list(block.named_parameters()) + list(block.named_buffers()):
            data = tensor.data
            homes.append((f"{name}.{tname}", tensor, data.untyped_storage().data_ptr(),
                          data.storage_offset(), data.dtype, data.clone()))
    return homes


def moved(homes: list[tuple]) -> list[str]:
    out = []
    for name, tensor, ptr, offset, dtype, values in homes:
        data = tensor.data
        if (data.untyped_storage().data_ptr(), data.storage_offset(), data.dtype) != (ptr, offset, dtype):
            out.append(f"{name}: storage")
        elif not _bytes(data).equal(_bytes(values)):
            out.append(f"{name}: values")
    return out


def _bytes(tensor):
    """The tensor's elements as raw bytes (fp8 has no `==` on the CPU; NaNs compare equal)."""
    import torch

    return tensor.detach().reshape(-1).contiguous().view(torch.uint8)
