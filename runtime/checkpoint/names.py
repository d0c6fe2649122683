"""A checkpoint's original tensor names (BFL's, Wan's, ...; possibly under ComfyUI's
`model.diffusion_model.` prefix) converted to diffusers names by the family's converter.
`load` (plain safetensors) and `load_quantized` (GGUF, packed) both go through here."""

from __future__ import annotations

from pathlib import Path

from runtime.errors import CheckpointError
from runtime.families import get_family

COMFYUI_PREFIX = "model.diffusion_model."
FIX = "give the transformer checkpoint of the model that the weights folder's config describes"


def to_diffusers(family: str, state: dict, shapes: dict, path: Path) -> tuple[dict, list[str]]:
    """Original names converted to diffusers names, and the file names left unused."""
    adapter = get_family(family)
    stripped, unprefixed = strip_prefix(state, path)
    try:
        converted = adapter.convert_original(unprefixed, shapes)  # pops what it maps
    except NotImplementedError:
        raise CheckpointError(
            f"transformer file {path} uses the original {family} names, which cannot be "
            f"converted yet: give a file with diffusers tensor names"
        ) from None
    except KeyError as e:
        shown = _prefix_like(stripped, e.args[0] if e.args else "?")
        raise CheckpointError(
            f"transformer file {path} lacks the tensor {shown!r}: {FIX}"
        ) from None
    except (IndexError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"transformer file {path} cannot be converted from original names ({e}): {FIX}"
        ) from e
    return converted, sorted(stripped[name] for name in unprefixed)


def strip_prefix(state: dict, path: Path) -> tuple[dict[str, str], dict]:
    """({name without ComfyUI's prefix: name in the file}, {name without the prefix: tensor})."""
    stripped: dict[str, str] = {}
    unprefixed = {}
    for name, tensor in state.items():
        short = name.removeprefix(COMFYUI_PREFIX)
        if short in stripped:
            raise CheckpointError(
                f"transformer file {path} holds both {stripped[short]!r} and {name!r}: "
                f"export it again with one name per tensor"
            )
        stripped[short] = name
        unprefixed[short] = tensor
    return stripped, unprefixed


def _prefix_like(stripped: dict[str, str], name: str) -> str:
    """`name` as the file would spell it: with the prefix its other tensors carry."""
    prefixed = any(full.startswith(COMFYUI_PREFIX) for full in stripped.values())
    return COMFYUI_PREFIX + name if prefixed else name
