"""Adapter weights (PEFT LoRA) inside a model under a plan.

diffusers' `load_lora_weights` wraps a Linear in a PEFT layer that keeps the original Linear as
`base_layer` (same Parameter objects) and adds small adapter tensors (`lora_A`, `lora_B`, ...,
named by the layer's `adapter_layer_names`). The engine treats them as part of the block that
holds them: they stream in that block's pack or stay resident with it, and they are left out
of the comparison of the model with the plan (the plan describes the base model). When the set
of adapter tensors changes under an applied plan (LoRA loaded, deleted or unloaded after
`apply_plan`), the handle notices at the next forward and applies the plan again, so the new
tensors are placed like the rest of their block. Fusing and unfusing change base weights in
place (`weight.data += delta`): that lands in the block's pack, but the ring has already
prefetched the first streamed blocks of the next forward from the pack as it was, so a change
of what is merged re-applies the plan too. `set_adapters` changes only scales and active
names, which the forward reads as it runs: nothing to do.
"""

from __future__ import annotations

import torch


def adapter_layers(model) -> list:
    """Modules that own adapter tensors (PEFT tuner layers), found by their declared names."""
    return [m for m in model.modules() if getattr(m, "adapter_layer_names", None)]


def adapter_tensors(model) -> list[torch.Tensor]:
    """Every adapter tensor of `model`, each once, in module order."""
    seen: set[int] = set()
    out = []
    for layer in adapter_layers(model):
        for name in layer.adapter_layer_names:
            holder = getattr(layer, name, None)
            if not isinstance(holder, torch.nn.Module):
                continue
            for tensor in list(holder.parameters()) + list(holder.buffers()):
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    out.append(tensor)
    return out


def signature(model) -> tuple:
    """Adapter tensors by identity and what each layer has merged into its base weights:
    a change in either means the plan must be applied again."""
    ids = frozenset(id(t) for t in adapter_tensors(model))
    merged = tuple(tuple(getattr(m, "merged_adapters", ())) for m in adapter_layers(model))
    return ids, merged


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def settle_with_base_layers(model) -> None:
    """Move each adapter layer's adapter tensors to the device its base layer's weight is on.

    Called once the plan's placement has been undone, before applying it again: adapters
    loaded while the plan held the base weights elsewhere (on the GPU, in a host pack) then
    start from where the model keeps that layer when no plan is applied, so `remove()` later
    leaves them there too."""
    for layer in adapter_layers(model):
        base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else None
        weight = getattr(base, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        for name in layer.adapter_layer_names:
            holder = getattr(layer, name, None)
            if isinstance(holder, torch.nn.Module):
                for tensor in list(holder.parameters()) + list(holder.buffers()):
                    if tensor.device != weight.device:
                        tensor.data = tensor.data.to(weight.device)
