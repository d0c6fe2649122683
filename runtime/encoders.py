"""Text encoders that do not fit beside the budget are streamed through the ring, not run on
the CPU: T5-XXL's `encoder.block`, umT5's, Qwen2.5-VL's and Mistral's `layers`.

An encoder runs once or twice per prompt, so there is nothing to tune: `stream_encoder`
applies the plan that always fits, every block (found by `runtime.discovery`) streamed at
depth 1, within the VRAM budget left beside what the device already holds. Its non-block
modules (embeddings, final norm) sit on the device; `remove()` puts everything back.

`one_dtype(module)`: transformers keeps T5's `wo` projections in fp32 inside a bf16 model
(`_keep_in_fp32_modules`, for fp16's range); plans count bytes by one storage dtype, so in a
bf16 encoder those are cast to bf16 (bf16 has fp32's range: the reason for keeping them does
not hold). An fp16 encoder stays mixed and is not streamed.
"""

from __future__ import annotations

import torch

from runtime.discovery import find_blocks
from runtime.dtypes import DType
from runtime.engine.device import device_name
from runtime.engine.handle import apply as apply_engine
from runtime.errors import UserError
from runtime.inventory import inventory_of_module
from runtime.plan import Target, stream_all_plan
from runtime.workload import Workload

# Encoders are keyed by nothing a workload says: the plan carries this placeholder.
ENCODER_WORKLOAD = Workload(height=16, width=16, batch=1, text_tokens=1)


def floating_dtypes(module) -> set:
    return {t.dtype for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()}


def one_dtype(module) -> bool:
    """Cast fp32-kept tensors of a bf16 module to bf16 (see the module docstring); whether the
    module is now stored in one floating dtype."""
    found = floating_dtypes(module)
    if found == {torch.bfloat16, torch.float32}:
        for t in list(module.parameters()) + list(module.buffers()):
            if t.dtype == torch.float32:
                t.data = t.data.to(torch.bfloat16)
        found = {torch.bfloat16}
    return len(found) == 1


def stream_encoder(module, device: torch.device, budget_bytes: int):
    """`module` with every block streamed at depth 1 on `device` (an `OffloadHandle`); a
    `UserError` where it has no blocks or mixes floating dtypes."""
    if not one_dtype(module):
        raise UserError(f"{type(module).__name__} mixes floating dtypes and cannot be streamed")
    discovery = find_blocks(module)
    adapter = discovery.adapter()
    storage = DType.from_torch(floating_dtypes(module).pop())
    inventory = inventory_of_module(module, adapter, f"auto:{type(module).__name__}", storage)
    plan = stream_all_plan(inventory, ENCODER_WORKLOAD, Target(device_name(device), budget_bytes))
    return apply_engine(module, adapter, plan, device)
