"""Plan against model: everything is checked before anything is touched.

Family, block names, count, order and kinds, each block's bytes (from the real module's
inventory), the dtype of every stored tensor, and that the model is not already under some
other offloading. Adapter weights (LoRA, see `runtime.engine.adapters`) are not part of the
base model the plan describes and are left out. Each mismatch is one `PlanMismatchError`
sentence naming the input and the fix.
"""

from __future__ import annotations

from runtime.dtypes import DType, compute_dtype, storage_dtype
from runtime.errors import PlanMismatchError
from runtime.inventory import Inventory, inventory_of_module, stored_as_is

from runtime.engine.adapters import adapter_tensors

_RETUNE = "build a plan for this model (planner tune)"


def check_plan(model, adapter, plan) -> Inventory:
    """The model's inventory under the plan's storage dtype, once the plan fits the model."""
    if plan.model.family != adapter.name:
        raise PlanMismatchError(
            f"the plan is for a {plan.model.family} model ({plan.model.id}) but this is a "
            f"{adapter.name} model: {_RETUNE}"
        )
    if plan.model.compute_dtype is not compute_dtype(plan.model.storage_dtype):
        raise PlanMismatchError(
            f"the plan computes in {plan.model.compute_dtype.value} but stores "
            f"{plan.model.storage_dtype.value}, which computes in "
            f"{compute_dtype(plan.model.storage_dtype).value}: {_RETUNE}"
        )
    _check_untouched(model)
    skip = frozenset(id(t) for t in adapter_tensors(model))
    formats = {b.name: b.format for b in plan.blocks if b.format is not None}
    inv = inventory_of_module(model, adapter, plan.model.id, plan.model.storage_dtype, skip,
                              formats)
    _check_blocks(inv, plan)
    converted = frozenset(id(t) for name, _, block in adapter.blocks(model) if name in formats
                          for t in list(block.parameters()) + list(block.buffers()))
    skip = skip | converted
    if getattr(adapter, "free_non_block_dtypes", False):  # discovered blocks: check only them
        skip = skip | _non_block_ids(model, adapter)
    _check_dtypes(model, plan.model.storage_dtype, plan.model.id, skip)
    return inv


def _non_block_ids(model, adapter) -> frozenset[int]:
    """Ids of tensors outside every block: an adapter with `free_non_block_dtypes` (generic
    discovery) lets them keep their own dtypes (a float64 position table beside fp32 blocks);
    the engine moves them as they are."""
    inside = {id(t) for _, _, block in adapter.blocks(model)
              for t in list(block.parameters()) + list(block.buffers())}
    return frozenset(id(t) for t in list(model.parameters()) + list(model.buffers())
                     if id(t) not in inside)


def _active_foreign_hooks(module) -> bool:
    """accelerate's `_hf_hook` is always active; diffusers leaves an empty `_diffusers_hook`
    registry behind after an ordinary pipeline call, which holds no hook and is harmless."""
    if hasattr(module, "_hf_hook"):
        return True
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and bool(getattr(registry, "hooks", True))


def _check_untouched(model) -> None:
    for name, module in model.named_modules():
        if _active_foreign_hooks(module):
            raise PlanMismatchError(
                f"module {name or type(model).__name__!r} is already under accelerate or "
                f"diffusers offloading hooks: load the model without them, then apply the plan"
            )
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.device.type == "meta":
            raise PlanMismatchError(
                f"tensor {name} has no data (meta device): load the model's weights, then "
                f"apply the plan"
            )


def _check_blocks(inv: Inventory, plan) -> None:
    if len(inv.blocks) != len(plan.blocks):
        raise PlanMismatchError(
            f"the plan has {len(plan.blocks)} blocks for {plan.model.id} but the model has "
            f"{len(inv.blocks)}: {_RETUNE}"
        )
    for have, want in zip(inv.blocks, plan.blocks):
        if have.name != want.name or have.kind != want.kind:
            raise PlanMismatchError(
                f"block {have.index} of the model is {have.name} ({have.kind}) but the plan "
                f"has {want.name} ({want.kind}) there: {_RETUNE}"
            )
        if have.bytes != want.bytes:
            raise PlanMismatchError(
                f"block {have.name} holds {have.bytes} bytes in "
                f"{plan.model.storage_dtype.value} but the plan says {want.bytes}: the plan is "
                f"for another model or dtype; {_RETUNE}"
            )


def _check_dtypes(model, storage: DType, model_id: str, skip: frozenset[int]) -> None:
    """Every parameter in the dtype `storage` keeps it in. Buffers are not stored weights: a
    model computes its rotary and position tables (Wan's `rope.freqs_cos`, SD3's
    `pos_embed.pos_embed`, Chroma's `mod_proj`) in a float dtype whatever the checkpoint holds,
    so they are left to the block byte check."""
    if storage.is_quantized or stored_as_is(model, storage):
        return  # the checkpoint decides each tensor's dtype; the block bytes were checked
    for name, tensor in model.named_parameters():
        if not tensor.is_floating_point() or id(tensor) in skip:
            continue
        want = storage_dtype(storage, tuple(tensor.shape)).torch()
        if tensor.dtype != want:
            got = str(tensor.dtype).removeprefix("torch.")
            raise PlanMismatchError(
                f"tensor {name} is {got} but the plan for {model_id} stores it as "
                f"{DType.from_torch(want).value}: load the model in "
                f"{storage.value} or {_RETUNE} from the model as loaded"
            )

