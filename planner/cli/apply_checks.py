"""What `planner apply` checks before any work: every option, the weights folder, the image
target. Each refusal is one sentence naming the option and the fix."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

from runtime.errors import UserError

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds
MAX_STEPS = 10_000


def image_suffixes(animated: bool = False) -> tuple[str, ...]:
    """File name endings PIL can write (several frames: formats that hold an animation)."""
    from PIL import Image

    Image.init()
    writers = Image.SAVE_ALL if animated else Image.SAVE
    found = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in writers}
    common = (".gif", ".webp", ".png") if animated else (".png", ".jpg", ".webp")
    first = tuple(e for e in common if e in found)  # the usual ones first: messages show these
    return first + tuple(sorted(found - set(first)))


def check_apply_inputs(
    *, weights: Path, transformer: Path | None, output: Path, steps: int | None, seed: int,
    guidance: float | None, height: int | None, width: int | None, frames: int = 1,
    denoiser: str = "transformer", guidance_2: float | None = None, experts: bool = False,
    transformer_2: Path | None = None, pipeline: str = "diffusers",
) -> tuple[str, ...]:
    """Refuse bad options before the pipeline loads; the image suffixes the output may take."""
    from runtime.files import check_target

    if steps is not None and not 1 <= steps <= MAX_STEPS:
        raise UserError(f"--steps {steps} is out of range: give 1 to {MAX_STEPS} denoising steps")
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed} is out of range: give 0 to 2**64-1")
    for name, value in (("--guidance", guidance), ("--guidance-2", guidance_2)):
        if value is not None and not (math.isfinite(value) and 0 <= value <= 1000):
            raise UserError(f"{name} {value} is not a guidance scale: give a number from 0 to 1000, e.g. 3.5")
    for name, given in (("--guidance-2", guidance_2), ("--transformer-2", transformer_2)):
        if given is not None and not experts:
            raise UserError(
                f"{name} is for the second expert and the plan's model has one transformer: drop {name}"
            )
    for name, value in (("--height", height), ("--width", width)):
        if value is not None and not (16 <= value <= 16384 and value % 16 == 0):
            raise UserError(f"{name} {value} is not an image size: give a multiple of 16 from 16 to 16384")
    _check_weights(weights, transformer, denoiser, pipeline)
    if transformer_2 is not None:
        _check_weights(weights, transformer_2, "transformer_2", pipeline, option="--transformer-2")
    suffixes = image_suffixes(animated=frames > 1)
    check_target(output, "-o", suffixes, "image" + suffixes[0])
    return suffixes


def _check_weights(weights: Path, transformer: Path | None, denoiser: str, pipeline: str,
                   option: str = "--transformer") -> None:
    """The pipeline folder holds model_index.json and the denoiser's subfolder (`transformer/`,
    `unet/` for UNet families) with its config, and its weights unless `option` gives them."""
    if not weights.is_dir():
        raise UserError(
            f"--weights {weights} is not a folder: give a local diffusers {pipeline} folder "
            f"(with model_index.json)"
        )
    if not (weights / "model_index.json").is_file():
        raise UserError(
            f"--weights {weights} has no model_index.json: give a local diffusers {pipeline} "
            f"folder (save_pretrained or a downloaded snapshot)"
        )
    if not (weights / denoiser / "config.json").is_file():
        raise UserError(
            f"--weights {weights} has no {denoiser}/config.json: give the whole pipeline folder "
            f"(its {denoiser}/ subfolder holds the config even when {option} gives the weights)"
        )
    if transformer is None:
        folder = weights / denoiser
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise UserError(
                f"--weights {weights} has no transformer weights in {folder}: give a complete "
                f"pipeline folder, or the transformer file with --transformer FILE.safetensors"
            )
        return
    try:
        mode = os.stat(transformer).st_mode
    except OSError as e:
        raise UserError(f"{option} {transformer} cannot be read ({e.strerror}): give a .safetensors file") from e
    if not stat.S_ISREG(mode):
        raise UserError(f"{option} {transformer} is not a regular file: give a .safetensors file")
