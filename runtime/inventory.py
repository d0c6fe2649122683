"""The exact block inventory of a model: every block's parameters and bytes, by dtype.

Built from the real architecture (on the `meta` device when it comes from a config), so the
numbers are the model's own.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from runtime.dtypes import DType, storage_dtype


@dataclasses.dataclass(frozen=True)
class BlockInfo:
    name: str  # module path, e.g. "transformer_blocks.3"
    kind: str  # e.g. "double"
    index: int  # position in execution order
    params: int
    bytes_by_dtype: Mapping[str, int]  # storage dtype name -> bytes

    @property
    def bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())


@dataclasses.dataclass(frozen=True)
class Inventory:
    model_id: str
    family: str
    storage_dtype: DType
    blocks: tuple[BlockInfo, ...]
    non_block_params: int
    non_block_bytes_by_dtype: Mapping[str, int]

    @property
    def non_block_bytes(self) -> int:
        return sum(self.non_block_bytes_by_dtype.values())

    @property
    def non_block_device_bytes(self) -> int:
        """Bytes the non-block modules take on the device: the runtime keeps them in the
        compute dtype (fp8 storage arrives as bf16), as the pipeline reads the model's dtype
        from them."""
        return sum(_device_groups(self.non_block_bytes_by_dtype, cast_on_host=True).values())

    @property
    def block_params(self) -> int:
        return sum(b.params for b in self.blocks)

    @property
    def total_params(self) -> int:
        return self.block_params + self.non_block_params

    @property
    def block_bytes(self) -> int:
        return sum(b.bytes for b in self.blocks)

    @property
    def total_bytes(self) -> int:
        return self.block_bytes + self.non_block_bytes

    def block(self, name: str) -> BlockInfo:
        for info in self.blocks:
            if info.name == name:
                return info
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "model": self.model_id,
            "family": self.family,
            "dtype": self.storage_dtype.value,
            "blocks": [
                {
                    "name": b.name,
                    "kind": b.kind,
                    "index": b.index,
                    "params": b.params,
                    "bytes": b.bytes,
                    "bytes_by_dtype": dict(b.bytes_by_dtype),
                }
                for b in self.blocks
            ],
            "non_block": {
                "params": self.non_block_params,
                "bytes": self.non_block_bytes,
                "bytes_by_dtype": dict(self.non_block_bytes_by_dtype),
            },
            "total": {"params": self.total_params, "bytes": self.total_bytes},
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Inventory":
        """The inverse of `to_dict` (for the model cache: data this tool wrote itself)."""
        blocks = tuple(
            BlockInfo(b["name"], b["kind"], b["index"], b["params"], dict(b["bytes_by_dtype"]))
            for b in data["blocks"]
        )
        rest = data["non_block"]
        return cls(data["model"], data["family"], DType(data["dtype"]), blocks, rest["params"],
                   dict(rest["bytes_by_dtype"]))


def _tensor_bytes_of(tensors, storage: DType) -> tuple[int, dict[str, int]]:
    params = 0
    by_dtype: dict[str, int] = {}
    for tensor in tensors:
        numel = tensor.numel()
        params += numel
        dtype = storage_dtype(storage, tuple(tensor.shape))
        by_dtype[dtype.value] = by_dtype.get(dtype.value, 0) + numel * dtype.itemsize
    return params, by_dtype


def inventory_of_module(
    model, adapter, model_id: str, storage: DType, skip: frozenset[int] = frozenset()
) -> Inventory:
    """Inventory of a built model (on any device, meta included) stored as `storage`;
    tensors whose ids are in `skip` (adapter weights) are left out."""
    blocks = []
    block_ids = set(skip)
    for index, (name, kind, block) in enumerate(adapter.blocks(model)):
        tensors = [t for t in list(block.parameters()) + list(block.buffers()) if id(t) not in skip]
        params, by_dtype = _tensor_bytes_of(tensors, storage)
        blocks.append(BlockInfo(name, kind, index, params, by_dtype))
        block_ids.update(id(t) for t in tensors)
    rest = [t for t in list(model.parameters()) + list(model.buffers()) if id(t) not in block_ids]
    rest_params, rest_by_dtype = _tensor_bytes_of(rest, storage)
    return Inventory(model_id, adapter.name, storage, tuple(blocks), rest_params, rest_by_dtype)


def inventory(model_id: str, storage: DType | None = None) -> Inventory:
    """Inventory of a catalog model, derived on `meta` (no weights, no memory) once and then
    read from the model cache (`runtime.model_cache`)."""
    from runtime.catalog import get_model
    from runtime.model_cache import cached

    spec = get_model(model_id)
    storage = storage or spec.storage_dtype
    data = cached("inventory", spec, inventory_args(storage),
                  lambda: derive_inventory(model_id, storage).to_dict())
    return Inventory.from_dict(data)


def inventory_args(storage: DType) -> dict:
    return {"storage": storage.value}


def derive_inventory(model_id: str, storage: DType) -> Inventory:
    """The inventory built from the model on `meta`."""
    from runtime.catalog import get_model
    from runtime.families import get_family

    spec = get_model(model_id)
    adapter = get_family(spec.family)
    model = adapter.build(spec.config, device="meta")
    return inventory_of_module(model, adapter, model_id, storage)


def device_bytes_by_dtype(block: BlockInfo, cast_on_host: bool) -> dict[str, int]:
    """Bytes by dtype a block occupies on the device (and moves per copy when streamed).

    fp8 storage with the cast on the host (`pre`) arrives in the compute dtype (bf16): its fp8
    matrices take twice the bytes. Otherwise the device holds the storage dtype as it is.
    """
    return _device_groups(block.bytes_by_dtype, cast_on_host)


def _device_groups(bytes_by_dtype: Mapping[str, int], cast_on_host: bool) -> dict[str, int]:
    from runtime.dtypes import compute_dtype

    out: dict[str, int] = {}
    for name, num_bytes in bytes_by_dtype.items():
        dtype = DType(name)
        if cast_on_host and dtype.is_fp8:
            target = compute_dtype(dtype)
            num_bytes = num_bytes // dtype.itemsize * target.itemsize
            dtype = target
        out[dtype.value] = out.get(dtype.value, 0) + num_bytes
    return out
