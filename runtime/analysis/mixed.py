"""The inventory of a model whose blocks a plan converts: each converted block's exact bytes
in its own format with its pruned MLP units removed, counted on the `meta` device (no weights).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from runtime.analysis.pruning import prune_units
from runtime.dtypes import DType

Pruned = tuple[tuple[str, tuple[int, ...]], ...]


def plan_conversions(plan) -> tuple[dict[str, DType], dict[str, Pruned]]:
    """The plan's per-block formats and pruned units, by block name."""
    return ({b.name: b.format for b in plan.blocks if b.format is not None},
            {b.name: b.pruned for b in plan.blocks if b.pruned})


def planned_inventory(model, adapter, model_id: str, storage: DType,
                      formats: Mapping[str, DType], pruned: Mapping[str, Pruned] | None = None):
    """The inventory of `model` (built on `meta`; its blocks are pruned in place) with the
    blocks in `formats` stored in their format and those in `pruned` pruned. Blocks the model
    lacks are left to the caller's block check."""
    from runtime.inventory import inventory_of_module

    blocks = {name: block for name, _, block in adapter.blocks(model)}
    for name, sites in (pruned or {}).items():
        if name in blocks:
            for path, units in sites:
                prune_units(blocks[name], path, units)
    return inventory_of_module(model, adapter, model_id, storage, formats=formats)


def converted_inventory(inv, formats: Mapping[str, DType], pruned: Mapping[str, Pruned] | None = None):
    """`inv` (a catalog model's `runtime.inventory.Inventory`) with the blocks named in
    `formats` stored in their format and those in `pruned` pruned."""
    from runtime.catalog import get_model
    from runtime.families import get_family

    spec = get_model(inv.model_id)
    adapter = get_family(spec.family)
    model = adapter.build(spec.config, device="meta")
    out = planned_inventory(model, adapter, inv.model_id, inv.storage_dtype, formats, pruned)
    return dataclasses.replace(out, model_id=inv.model_id)
