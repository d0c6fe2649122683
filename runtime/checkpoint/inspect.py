"""What a local checkpoint holds, block by block, from its headers alone.

`inspect_checkpoint(path)` accepts a single `.safetensors` file, a diffusers model folder
(`diffusion_pytorch_model.safetensors` or a sharded `...safetensors.index.json`), a pipeline
folder with a `transformer/` (or `unet/`) subfolder, an index file itself, or a `.gguf` file.
Quantized blocks (GGUF, bitsandbytes NF4) are counted in their packed bytes
(`runtime.checkpoint.stored`). It reads only headers, so a
24 GB checkpoint answers at once, and asks the family adapters which block each tensor
belongs to: no family is named here.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from runtime.checkpoint.header import Header, read_header
from runtime.checkpoint.stored import FileFormat, StoredTensor, gguf_tensors, safetensors_tensors
from runtime.checkpoint.stored import storage_name as _storage_name
from runtime.errors import CheckpointError
from runtime.strict_json import DuplicateKey, loads_strict

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = WEIGHTS_NAME + ".index.json"
TRANSFORMER_FOLDER = "transformer"
MAX_INDEX_BYTES = 100_000_000


class Naming(str, enum.Enum):
    DIFFUSERS = "diffusers"  # tensor names are diffusers module paths (transformer_blocks.N)
    ORIGINAL = "original"  # the family's original release names (double_blocks.N)
    MIXED = "mixed"  # both: a converted file that kept some original names


@dataclasses.dataclass(frozen=True)
class BlockReport:
    name: str  # diffusers module path, e.g. "transformer_blocks.3"
    kind: str
    index: int  # position in execution order
    tensors: int
    bytes_by_dtype: Mapping[str, int]  # storage name (bf16, fp8, ... or the tag) -> bytes

    @property
    def bytes(self) -> int:
        return sum(self.bytes_by_dtype.values())

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(sorted(self.bytes_by_dtype))


@dataclasses.dataclass(frozen=True)
class CheckpointReport:
    path: Path  # what the user named
    files: tuple[Path, ...]  # the safetensors files read
    family: str
    naming: Naming
    blocks: tuple[BlockReport, ...]
    non_block_tensors: int
    non_block_bytes_by_dtype: Mapping[str, int]
    format: FileFormat = FileFormat.SAFETENSORS
    # tensors outside the blocks that no catalog model of the family has (a file for another
    # model, or damaged): `apply` refuses such a file
    unknown_tensors: tuple[str, ...] = ()

    @property
    def non_block_bytes(self) -> int:
        return sum(self.non_block_bytes_by_dtype.values())

    @property
    def block_bytes(self) -> int:
        return sum(b.bytes for b in self.blocks)

    @property
    def total_bytes(self) -> int:
        return self.block_bytes + self.non_block_bytes

    @property
    def total_tensors(self) -> int:
        return sum(b.tensors for b in self.blocks) + self.non_block_tensors

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "files": [str(f) for f in self.files],
            "family": self.family,
            "naming": self.naming.value,
            "format": self.format.value,
            "blocks": [
                {
                    "name": b.name,
                    "kind": b.kind,
                    "index": b.index,
                    "dtypes": list(b.dtypes),
                    "tensors": b.tensors,
                    "bytes": b.bytes,
                    "bytes_by_dtype": dict(b.bytes_by_dtype),
                }
                for b in self.blocks
            ],
            "non_block": {
                "tensors": self.non_block_tensors,
                "bytes": self.non_block_bytes,
                "bytes_by_dtype": dict(self.non_block_bytes_by_dtype),
            },
            "total": {"tensors": self.total_tensors, "bytes": self.total_bytes},
            "unknown_tensors": list(self.unknown_tensors),
        }


def storage_name(tag: str) -> str:
    """Our dtype name for a safetensors tag (`BF16` -> `bf16`); the tag where we have none."""
    return _storage_name(tag)


def inspect_checkpoint(path: str | Path) -> CheckpointReport:
    """The block-by-block contents of the checkpoint at `path` (file or diffusers folder)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        kind, files, tensors = FileFormat.GGUF, (path,), gguf_tensors(path)
    else:
        headers = _read_headers(path)
        files = tuple(h.path for h in headers)
        kind, tensors = safetensors_tensors(headers)
    adapter = _pick_family(tensors, path)
    return dataclasses.replace(_report(path, files, adapter, tensors), format=kind)


# ---------------------------------------------------------------- finding the files


def _read_headers(path: Path) -> list[Header]:
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist: give a .safetensors file or a diffusers folder"
        )
    if path.is_dir():
        return _read_folder(path)
    if path.name.endswith(".index.json"):
        return _read_index(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"checkpoint {path} is not a .safetensors file nor a .gguf one: give a .safetensors file, "
            f"a .gguf file, an {INDEX_NAME} or a diffusers folder (pickled .ckpt/.bin files "
            f"are not read)"
        )
    return [read_header(path)]


def _read_folder(folder: Path) -> list[Header]:
    from runtime.families import denoiser_attributes

    subfolders = [folder / name for name in denoiser_attributes() if (folder / name).is_dir()]
    if subfolders:
        folder = subfolders[0]
    if (folder / WEIGHTS_NAME).is_file():
        return [read_header(folder / WEIGHTS_NAME)]
    if (folder / INDEX_NAME).is_file():
        return _read_index(folder / INDEX_NAME)
    raise CheckpointError(
        f"folder {folder} holds neither {WEIGHTS_NAME} nor {INDEX_NAME}: give a diffusers "
        f"model folder, a pipeline folder with {TRANSFORMER_FOLDER}/ (or unet/), or a .safetensors file"
    )


def _load_index(index: Path) -> dict[str, str]:
    try:
        if index.stat().st_size > MAX_INDEX_BYTES:
            raise CheckpointError(f"index {index} is over 100 MB: it is not a diffusers index file")
        data = loads_strict(index.read_bytes().decode("utf-8"))
    except OSError as e:
        raise CheckpointError(f"cannot read index {index}: {e.strerror or e}") from e
    except DuplicateKey as e:
        raise CheckpointError(
            f"index {index} names {e.key!r} twice: download or export the checkpoint again"
        ) from None
    except (ValueError, RecursionError):
        raise CheckpointError(
            f"index {index} is not UTF-8 JSON: download or export the checkpoint again"
        ) from None
    weight_map = data.get("weight_map") if type(data) is dict else None
    if type(weight_map) is not dict or not weight_map:
        raise CheckpointError(
            f"index {index} has no weight_map object of tensor names to shard files: "
            f"download or export the checkpoint again"
        )
    for name, shard in weight_map.items():
        if type(shard) is not str or not shard or Path(shard).name != shard:
            raise CheckpointError(
                f"index {index} maps tensor {name!r} to {shard!r}, not a file name in its "
                f"folder: download or export the checkpoint again"
            )
    return weight_map


def _read_index(index: Path) -> list[Header]:
    weight_map = _load_index(index)
    headers = []
    for shard in sorted(set(weight_map.values())):
        shard_path = index.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(
                f"index {index} names the shard {shard}, which is missing: download it again"
            )
        headers.append(read_header(shard_path))
    _check_index(index, weight_map, headers)
    return headers


def _check_index(index: Path, weight_map: dict[str, str], headers: list[Header]) -> None:
    seen: dict[str, str] = {}
    for header in headers:
        for tensor in header.tensors:
            if tensor.name in seen:
                raise CheckpointError(
                    f"tensor {tensor.name!r} is in both {seen[tensor.name]} and "
                    f"{header.path.name} of {index.parent}: download the checkpoint again"
                )
            seen[tensor.name] = header.path.name
            listed = weight_map.get(tensor.name)
            if listed != header.path.name:
                where = f"lists it in {listed}" if listed else "does not list it"
                raise CheckpointError(
                    f"tensor {tensor.name!r} is in {header.path.name} but index {index} "
                    f"{where}: download the checkpoint again"
                )
    missing = sorted(set(weight_map) - set(seen))
    if missing:
        raise CheckpointError(
            f"index {index} lists tensor {missing[0]!r} in {weight_map[missing[0]]}, which "
            f"does not hold it: download the checkpoint again"
        )


# ---------------------------------------------------------------- mapping to blocks


def _pick_family(tensors: list[StoredTensor], path: Path):
    """The family that claims the most of the file's tensors (by default its block tensors;
    see `FamilyAdapter.claims`). Families can spell their blocks alike (FLUX's and SD3's
    diffusers names are both `transformer_blocks.N.`), so a tie goes to the family whose
    architecture has more of the file's other tensors."""
    from runtime.families import families, get_family

    names = [t.name for t in tensors]
    counts = {}
    for name in families():
        count = get_family(name).claims(names)
        if count:
            counts[name] = count
    if not counts:
        raise CheckpointError(
            f"no tensor of {path} belongs to a block of a known model family "
            f"({', '.join(families())}): give a diffusion transformer checkpoint"
        )
    top = max(counts.values())
    tied = [name for name, count in counts.items() if count == top]
    if len(tied) > 1:
        tied.sort(key=lambda name: -_known_non_block(get_family(name), tensors))
    return get_family(tied[0])


def _known_non_block(adapter, tensors: list[StoredTensor]) -> int:
    """How many of the file's non-block tensors the family's catalog architectures have."""
    known = _non_block_names(adapter.name)
    return sum(
        1 for t in tensors
        if adapter.block_of_tensor(t.name) is None and _unprefixed(t.name) in known
    )


_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")


def _unprefixed(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


@functools.lru_cache(maxsize=None)
def _non_block_names(family: str) -> frozenset[str]:
    """Diffusers names of the tensors outside the blocks, over the family's catalog models,
    read through the model cache (derived once, on `meta`): inspecting a file then imports
    neither diffusers nor, through it, bitsandbytes."""
    from runtime.families import get_family
    from runtime.model_cache import cached

    adapter = get_family(family)
    names = set()
    for spec in adapter.models():
        names.update(cached(NON_BLOCK_KIND, spec, {}, lambda spec=spec: derive_non_block_names(adapter, spec))["names"])
    return frozenset(names)


NON_BLOCK_KIND = "non_block_names"


def derive_non_block_names(adapter, spec) -> dict:
    """{"names": the diffusers names of `spec`'s tensors outside its blocks} (builds on meta)."""
    model = adapter.build(spec.config, device="meta")
    return {"names": sorted(n for n in model.state_dict() if adapter.block_of_tensor(n) is None)}


def _naming_of(adapter, tensor_name: str, block: str) -> Naming | None:
    original = adapter.is_original_name(tensor_name, block)
    if original is None:
        return None
    return Naming.ORIGINAL if original else Naming.DIFFUSERS


def _report(path: Path, files: tuple[Path, ...], adapter, tensors: list[StoredTensor]):
    from runtime.families.base import block_position

    per_block: dict[str, tuple[int, dict[str, int]]] = {}
    rest_names, rest_bytes = [], {}
    namings = set()
    for tensor in tensors:
        block = adapter.block_of_tensor(tensor.name)
        dtype = tensor.storage
        if block is None:
            rest_names.append(tensor.name)
            rest_bytes[dtype] = rest_bytes.get(dtype, 0) + tensor.nbytes
            continue
        naming = _naming_of(adapter, tensor.name, block)
        if naming is not None:
            namings.add(naming)
        count, by_dtype = per_block.get(block, (0, {}))
        by_dtype[dtype] = by_dtype.get(dtype, 0) + tensor.nbytes
        per_block[block] = (count + 1, by_dtype)

    def order(name: str) -> tuple[int, int]:
        return block_position(adapter.block_lists, name)[0]

    blocks = tuple(
        BlockReport(
            name=name,
            kind=block_position(adapter.block_lists, name)[1],
            index=i,
            tensors=per_block[name][0],
            bytes_by_dtype=MappingProxyType(per_block[name][1]),
        )
        for i, name in enumerate(sorted(per_block, key=order))
    )
    # a file whose block tensors are all spelled alike in both namings needs no conversion
    naming = Naming.MIXED if len(namings) > 1 else (namings.pop() if namings else Naming.DIFFUSERS)
    unknown = ()
    if naming is Naming.DIFFUSERS:  # original names are converted when loaded, and checked then
        known = _non_block_names(adapter.name)
        unknown = tuple(sorted(n for n in rest_names if _unprefixed(n) not in known))
    return CheckpointReport(
        path, files, adapter.name, naming, blocks, len(rest_names), MappingProxyType(rest_bytes),
        unknown_tensors=unknown,
    )
