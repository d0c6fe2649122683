"""LoRA files for `planner apply --lora FILE[:SCALE]`: parsed before any work, loaded into the
pipeline through diffusers' own loader (`load_lora_weights`, which needs peft), then weighted
with `set_adapters`. The engine places adapter weights with their blocks
(`runtime.engine.adapters`)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from runtime.errors import UserError


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    path: Path
    scale: float = 1.0


def parse_lora(text: str) -> LoraSpec:
    """`style.safetensors` or `style.safetensors:0.8` (a path may itself hold colons)."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            raise UserError(
                f"--lora {text!r}: the part after the last ':' must be a scale such as 0.8; "
                f"write FILE or FILE:SCALE"
            ) from None
        path = head
    if not math.isfinite(scale):
        raise UserError(f"--lora {text!r}: the scale must be a finite number, e.g. FILE:0.8")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--lora {text!r}: {path} is not a file: give a LoRA .safetensors file")
    return LoraSpec(path, scale)


def load_loras(pipe, loras: tuple[LoraSpec, ...]) -> None:
    """Load each LoRA under its own adapter name and weight them as asked."""
    if not loras:
        return
    try:
        import peft  # noqa: F401
    except ImportError:
        raise UserError(
            "--lora needs the peft package: pip install -e '.[lora]' in this repository"
        ) from None
    names = []
    for i, lora in enumerate(loras):
        name = f"lora{i}"
        try:
            pipe.load_lora_weights(str(lora.path), adapter_name=name)
        except (ValueError, KeyError, RuntimeError, OSError) as e:
            raise UserError(
                f"--lora {lora.path} cannot be loaded into this {type(pipe).__name__} ({e}): "
                f"give a LoRA made for this model"
            ) from e
        names.append(name)
    pipe.set_adapters(names, [lora.scale for lora in loras])
