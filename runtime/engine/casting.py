"""Just-in-time casts for fp8 weights kept in fp8 on the device (`auto` cast mode).

Each module that directly owns fp8 tensors gets a forward pre-hook that points them at a cast
copy in the compute dtype (made on the current, compute stream) and a forward hook that points
them back at the fp8 data. The cast copy lives only while that module runs.

The cast brackets the module's forward inside the hooks already there: its pre-hook runs
after theirs and its forward hook before theirs (`prepend=True`). A streamed block that owns
fp8 tensors itself (LTX-Video's and Wan's `scale_shift_table`) has the ring's hooks first: the
ring points the tensors at their slot, the cast stashes the slot view and casts it; after the
forward the cast puts the slot view back and only then the ring points them home. In the other
order the cast would put the slot view back after the ring had pointed them home, and the block
would keep a view into a ring slot (another block's weights) until its next forward.
"""

from __future__ import annotations

import torch

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES


def owns_fp8(module) -> bool:
    tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
    return any(is_fp8(t.dtype) for t in tensors)


class JustInTimeCast:
    """Hooks for one module: cast fp8 tensors to `compute` for the length of its forward."""

    def __init__(self, module, compute: torch.dtype) -> None:
        self.compute = compute
        self.tensors = list(module.parameters(recurse=False)) + list(
            module.buffers(recurse=False)
        )
        self.stash: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.handles = [
            module.register_forward_pre_hook(torch.compiler.disable(self.before)),
            module.register_forward_hook(
                torch.compiler.disable(self.after), always_call=True, prepend=True
            ),
        ]

    def before(self, module, args):
        self.after(module, args, None)  # a forward that raised may have left casts behind
        for tensor in self.tensors:
            if is_fp8(tensor.dtype):
                self.stash.append((tensor, tensor.data))
                tensor.data = tensor.data.to(self.compute)

    def after(self, module, args, output):
        while self.stash:
            tensor, data = self.stash.pop()
            tensor.data = data

    def remove(self) -> None:
        self.after(None, None, None)
        for handle in self.handles:
            handle.remove()
        self.handles = []


def install_casts(root, compute: torch.dtype) -> list[JustInTimeCast]:
    """Cast hooks on every module under `root` that owns fp8 tensors."""
    return [JustInTimeCast(m, compute) for m in root.modules() if owns_fp8(m)]
