"""The inventory of a model whose blocks a plan converts: each converted block's exact bytes
in its own format with its pruned MLP units removed, counted on the `meta` device (no weights).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from runtime.analysis.pruning import prune_units
from runtime.dtypes import DType

Pruned = tuple[tuple[str, tuple[int, ...]], ...]


def converted_inventory(inv, formats: Mapping[str, DType], pruned: Mapping[str, Pruned] | None = None):
    """`inv` (a catalog model's `runtime.inventory.Inventory`) with the blocks named in
    `formats` stored in their format and those in `pruned` pruned."""
    from runtime.catalog import get_model
    from runtime.families import get_family
    from runtime.inventory import inventory_of_module

    spec = get_model(inv.model_id)
    adapter = get_family(spec.family)
    model = adapter.build(spec.config, device="meta")
    for name, sites in (pruned or {}).items():
        block = model.get_submodule(name)
        for path, units in sites:
            prune_units(block, path, units)
    out = inventory_of_module(model, adapter, inv.model_id, inv.storage_dtype, formats=formats)
    return dataclasses.replace(out, model_id=inv.model_id)
