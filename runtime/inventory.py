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


def _tensor_bytes_of(tensors, storage: DType, as_stored: bool = False) -> tuple[int, dict[str, int]]:
    """Params and bytes by dtype; `as_stored`: tensors of a loaded quantized checkpoint, whose
    packed matrices carry their quant info and whose other tensors keep the file's dtype."""
    from runtime.engine.quantized import quant_info

    params = 0
    by_dtype: dict[str, int] = {}
    for tensor in tensors:
        info = quant_info(tensor)
        if info is not None:
            numel = 1
            for d in info.shape:
                numel *= d
            dtype, num_bytes = info.dtype, info.nbytes
        else:
            numel = tensor.numel()
            if as_stored and tensor.device.type != "meta":
                dtype = DType.from_torch(tensor.dtype)
            else:
                dtype = storage_dtype(storage, tuple(tensor.shape))
            num_bytes = dtype.nbytes(numel)
        params += numel
        by_dtype[dtype.value] = by_dtype.get(dtype.value, 0) + num_bytes
    return params, by_dtype


def inventory_of_module(
    model, adapter, model_id: str, storage: DType, skip: frozenset[int] = frozenset(),
    formats: Mapping[str, DType] | None = None,
) -> Inventory:
    """Inventory of a built model (on any device, meta included) stored as `storage`;
    tensors whose ids are in `skip` (adapter weights) are left out. Blocks named in `formats`
    are stored in their own format (a plan's per-block formats)."""
    as_stored = stored_as_is(model, storage)
    blocks = []
    block_ids = set(skip)
    for index, (name, kind, block) in enumerate(adapter.blocks(model)):
        tensors = [t for t in list(block.parameters()) + list(block.buffers()) if id(t) not in skip]
        own = (formats or {}).get(name)
        params, by_dtype = _tensor_bytes_of(tensors, own or storage, as_stored and own is None)
        blocks.append(BlockInfo(name, kind, index, params, by_dtype))
        block_ids.update(id(t) for t in tensors)
    rest = [t for t in list(model.parameters()) + list(model.buffers()) if id(t) not in block_ids]
    rest_params, rest_by_dtype = _tensor_bytes_of(rest, storage, as_stored)
    return Inventory(model_id, adapter.name, storage, tuple(blocks), rest_params, rest_by_dtype)


def stored_as_is(model, storage: DType) -> bool:
    """Whether `model`'s tensors are counted in the dtypes they are stored in rather than by
    the storage rule (`runtime.dtypes.storage_dtype`): a loaded quantized checkpoint, or fp8
    storage whose vectors are fp8 too (ComfyUI's fp8 `weight_dtype` stores biases and norm
    scales in fp8, where released fp8 checkpoints keep them in bf16)."""
    from runtime.engine.casting import is_fp8
    from runtime.engine.quantized import has_quantized

    if storage.is_quantized:
        return has_quantized(model)
    if not storage.is_fp8:
        return False
    return any(
        t.dim() < 2 and is_fp8(t.dtype) and t.device.type != "meta"
        for t in list(model.parameters()) + list(model.buffers())
    )


def inventory(model_id: str, storage: DType | None = None) -> Inventory:
    """Inventory of a catalog model, derived on `meta` (no weights, no memory) once and then
    read from the model cache (`runtime.model_cache`)."""
    from runtime.catalog import get_model
    from runtime.model_cache import cached

    spec = get_model(model_id)
    storage = storage or spec.storage_dtype
    data = cached("inventory", spec, inventory_args(storage),
                  lambda: derive_inventory(model_id, storage).to_dict())
    # the cache is keyed by architecture, and two catalog models may share one (Wan 2.1 14B
    # and one expert of Wan 2.2 A14B): the entry may name the other one
    return dataclasses.replace(Inventory.from_dict(data), model_id=model_id)


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


def device_bytes_by_dtype(block: BlockInfo, cast_on_host: bool,
                          compute: DType | None = None) -> dict[str, int]:
    """Bytes by dtype a block occupies on the device (and moves per copy when streamed).

    fp8 storage with the cast on the host (`pre`) arrives in the compute dtype (bf16): its fp8
    matrices take twice the bytes; quantized matrices (GGUF, NF4) dequantized on the host take
    their bf16 bytes. Otherwise the device holds the storage as it is (packed, for quantized).
    `compute`: the model's compute dtype where it is not the storage's own (a plan's block in
    its own format inside an fp32 model dequantizes to fp32).
    """
    return _device_groups(block.bytes_by_dtype, cast_on_host, compute)


def _device_groups(bytes_by_dtype: Mapping[str, int], cast_on_host: bool,
                   compute: DType | None = None) -> dict[str, int]:
    from runtime.dtypes import compute_dtype, dequantized_bytes

    out: dict[str, int] = {}
    for name, num_bytes in bytes_by_dtype.items():
        dtype = DType(name)
        if cast_on_host and dtype.casts:
            if compute is None or compute.casts:
                num_bytes = dequantized_bytes(dtype, num_bytes)
                dtype = compute_dtype(dtype)
            else:
                num_bytes, dtype = compute.nbytes(dtype.numel_of(num_bytes)), compute
        out[dtype.value] = out.get(dtype.value, 0) + num_bytes
    return out


def side_device_bytes(block: BlockInfo) -> int:
    """Bytes a streamed block's quantized weights keep on the device beside the ring: NF4's
    uint8 absmax (1 byte of each 33-byte block, as `runtime.dtypes.QUANT_BLOCKS` counts it)
    lives in bitsandbytes' quant state, moved to the device once. GGUF keeps nothing aside."""
    nf4 = block.bytes_by_dtype.get(DType.NF4.value, 0)
    return nf4 // DType.NF4.nbytes(64)


def quantization_of(block: BlockInfo) -> tuple[str, ...]:
    """The quant types a block's tensors are stored in (empty for a plain block)."""
    return tuple(sorted(d for d in block.bytes_by_dtype if DType(d).is_quantized))


def inventory_of_checkpoint(model_id: str, path) -> Inventory:
    """The inventory of catalog model `model_id` as the checkpoint at `path` stores it: each
    block's exact bytes by dtype or quant type (packed), read from the file's headers. Its
    storage dtype is the quant type (else dtype) holding most of the blocks' bytes."""
    from runtime.catalog import get_model
    from runtime.checkpoint.inspect import inspect_checkpoint
    from runtime.errors import CheckpointError

    spec = get_model(model_id)
    report = inspect_checkpoint(path)
    fix = f"give a checkpoint of {model_id} or pass the --model it holds"
    if report.family != spec.family:
        raise CheckpointError(f"checkpoint {path} holds a {report.family} model, not {model_id}: {fix}")
    known = {d.value for d in DType}
    totals: dict[str, int] = {}
    for by_dtype in [b.bytes_by_dtype for b in report.blocks] + [report.non_block_bytes_by_dtype]:
        for name, num_bytes in by_dtype.items():
            if name not in known:
                raise CheckpointError(
                    f"checkpoint {path} stores tensors as {name}, which plans cannot count yet "
                    f"(known: {', '.join(sorted(known))}): convert it to one of those"
                )
            totals[name] = totals.get(name, 0) + num_bytes
    plain = inventory(model_id)
    if [b.name for b in report.blocks] != [b.name for b in plain.blocks]:
        raise CheckpointError(
            f"checkpoint {path} has {len(report.blocks)} blocks but {model_id} has "
            f"{len(plain.blocks)}: {fix}"
        )
    quantized = {n: v for n, v in totals.items() if DType(n).is_quantized}
    storage = DType(max(quantized or totals, key=lambda n: (quantized or totals)[n]))
    blocks = tuple(
        BlockInfo(b.name, b.kind, b.index, p.params, dict(b.bytes_by_dtype))
        for b, p in zip(report.blocks, plain.blocks)
    )
    return Inventory(model_id, spec.family, storage, blocks, plain.non_block_params,
                     dict(report.non_block_bytes_by_dtype))
