"""Any local diffusers pipeline folder, loaded by the class its `model_index.json` names, and
the role of each of its components: denoisers (what `apply_auto` offloads block by block),
text encoders (on the device whole when they fit beside the budget, else streamed through the
same ring), and the rest (VAE, image encoder, ...: on the device for the whole run).

No family adapter is asked: roles come from the component's library class, so a pipeline of a
class nobody wrote an adapter for (Sana, CogView4, Lumina 2, Mochi, PixArt, cascades) is
driven the same way as FLUX.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from runtime.errors import UserError
from runtime.files import read_bounded
from runtime.strict_json import loads_strict

MAX_INDEX_BYTES = 1 << 20
# diffusers models that encode or decode pixels rather than denoise: they stay whole.
CODEC_WORDS = ("Autoencoder", "VQ", "VAE")


@dataclasses.dataclass(frozen=True)
class Roles:
    """Pipeline attribute names by role, in the pipeline's component order."""

    denoisers: tuple[str, ...]
    encoders: tuple[str, ...]
    rest: tuple[str, ...]


def read_model_index(folder: Path) -> dict:
    """`folder/model_index.json` through the strict reader (bounded, unique keys, finite
    numbers); one sentence where it is not a JSON object."""
    index = Path(folder) / "model_index.json"
    try:
        data = loads_strict(read_bounded(index, MAX_INDEX_BYTES, "model_index.json").decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(f"{index} is not valid JSON ({e}): restore the pipeline folder") from None
    if not isinstance(data, dict):
        raise UserError(f"{index} is not a JSON object: restore the pipeline folder")
    return data


def pipeline_class_name(folder: Path) -> str:
    """The pipeline class `folder/model_index.json` names; one sentence when it cannot."""
    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        raise UserError(
            f"weights folder {folder} has no model_index.json: give a local diffusers pipeline "
            f"folder (save_pretrained or a downloaded snapshot)"
        )
    data = read_model_index(folder)
    name = data.get("_class_name")
    if not isinstance(name, str) or not name.isidentifier():
        raise UserError(f"{index} names no pipeline class (_class_name): restore the pipeline folder")
    return name


def pipeline_class(folder: Path):
    """The diffusers pipeline class `folder` was saved from (not loaded)."""
    import diffusers

    name = pipeline_class_name(folder)
    cls = getattr(diffusers, name, None)
    if not isinstance(cls, type) or not issubclass(cls, diffusers.DiffusionPipeline):
        raise UserError(
            f"{folder}/model_index.json names {name}, which is not a diffusers "
            f"{diffusers.__version__} pipeline class: update diffusers or give another folder"
        )
    return cls


def image_argument(cls) -> str:
    """How pipeline class `cls` takes a conditioning image: "required", "optional" or "none"."""
    import inspect

    found = inspect.signature(cls.__call__).parameters.get("image")
    if found is None:
        return "none"
    return "required" if found.default is inspect.Parameter.empty else "optional"


def check_image(folder: Path, image) -> None:
    """Refuse a missing conditioning image the pipeline needs, or one it does not take."""
    cls = pipeline_class(folder)
    taken, name = image_argument(cls), cls.__name__
    if taken == "required" and image is None:
        raise UserError(f"{name} is conditioned on an image: give one with --image FILE")
    if taken == "none" and image is not None:
        raise UserError(f"{name} takes no conditioning image: leave out --image")
    if image is not None and not Path(image).is_file():
        raise UserError(f"--image {image} is not a file: give the conditioning image's path")


def takes_frames(folder: Path) -> bool:
    """Whether the folder's pipeline makes videos (its call takes `num_frames`)."""
    import inspect

    return "num_frames" in inspect.signature(pipeline_class(folder).__call__).parameters


def load_any_pipeline(folder: Path, dtype=None):
    """The pipeline saved in `folder`, of the class its model_index.json names, on the CPU.
    Nothing is fetched (`local_files_only`, `HF_HUB_OFFLINE=1`)."""
    cls = pipeline_class(folder)
    os.environ["HF_HUB_OFFLINE"] = "1"
    extra = {"dtype": dtype} if dtype is not None else {}
    # safetensors only: a pickle is never loaded (planner.cli.apply_preflight refuses a
    # folder holding only pickles before this)
    pipe = cls.from_pretrained(Path(folder), local_files_only=True, use_safetensors=True, **extra)
    if dtype is not None:  # plans store a denoiser in one dtype (see drop_fp32_kept)
        for name in roles_of(pipe).denoisers:
            drop_fp32_kept(getattr(pipe, name), dtype)
    return pipe


def roles_of(pipe) -> Roles:
    """Which components denoise, which encode text, which are the rest."""
    import torch
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    denoisers, encoders, rest = [], [], []
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        kind = type(module).__name__
        if isinstance(module, PreTrainedModel):
            (encoders if "text" in name else rest).append(name)
        elif isinstance(module, ModelMixin) and not any(w in kind for w in CODEC_WORDS):
            denoisers.append(name)
        else:
            rest.append(name)
    if not denoisers:
        raise UserError(
            f"{type(pipe).__name__} has no denoiser component (a diffusers transformer or UNet) "
            f"to offload: give a text-to-image or video pipeline folder"
        )
    return Roles(tuple(denoisers), tuple(encoders), tuple(rest))


def module_bytes(module) -> int:
    """Bytes of a module's parameters and buffers (shared tensors once)."""
    from runtime.engine.packing import unique_tensors

    return sum(t.numel() * t.element_size() for t in unique_tensors(module))


def drop_fp32_kept(model, dtype) -> None:
    """fp32 tensors of a model loaded in a 16-bit `dtype`, cast to it. diffusers keeps a
    class's `_keep_in_fp32_modules` (Wan's norms, modulation tables, time embedder, rotary
    tables) in fp32 when loading; a plan stores the model in one dtype, as the released bf16
    single files do, and those modules compute in fp32 inside their forward anyway."""
    import torch

    kept = getattr(model, "_keep_in_fp32_modules", None)
    if not kept or dtype not in (torch.bfloat16, torch.float16):
        return
    named = list(model.named_parameters()) + list(model.named_buffers())
    for name, tensor in named:  # diffusers' own rule: a kept module's name is a path component
        if tensor.dtype == torch.float32 and any(m in name.split(".") for m in kept):
            tensor.data = tensor.data.to(dtype)
