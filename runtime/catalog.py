"""Models users can name: each a family plus the config of its released transformer.

Every family module under `runtime/families/` lists its own models (`MODELS`, made with
`model_spec`); the catalog is their union, in registry order. The block inventory is always
derived from these configs by building the architecture on the `meta` device (see
`runtime.inventory`), never typed in by hand.
"""

from __future__ import annotations

import functools
from types import MappingProxyType
from typing import Mapping

from runtime.errors import UserError
from runtime.families import family_models
from runtime.model_spec import ModelSpec


@functools.lru_cache(maxsize=1)
def _catalog() -> Mapping[str, ModelSpec]:
    found: dict[str, ModelSpec] = {}
    for spec in family_models():
        if spec.id in found:
            raise ValueError(f"model id {spec.id!r} is listed by two families")
        found[spec.id] = spec
    return MappingProxyType(found)


def all_models() -> Mapping[str, ModelSpec]:
    """Every catalog model by id, in registry order."""
    return _catalog()


def get_model(model_id: str) -> ModelSpec:
    catalog = _catalog()
    try:
        return catalog[model_id]
    except KeyError:
        known = ", ".join(catalog)
        raise UserError(
            f"unknown model {model_id!r}: choose one of {known} (see `planner models list`)"
        ) from None


def find_model(model_id: str) -> ModelSpec | None:
    return _catalog().get(model_id)
