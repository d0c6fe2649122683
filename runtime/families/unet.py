"""Stable Diffusion UNets (diffusers `UNet2DConditionModel`): SDXL and SD 1.5, blocked at the
level of the UNet's down blocks, its mid block and its up blocks, in execution order.

The down blocks' outputs that the up blocks consume (skip tensors) are activations the
forward keeps where it puts them; the engine hooks only the block modules, so streaming a
block changes where its weights live, never where its skips go. Every down and up block has
inputs of its own shape (channels, resolution, the skips it takes), so each is a kind of its
own (`down0`, `up2`); the block inputs are the ones the model's own forward passes, recorded
from one forward on `meta`.

Checkpoint namings: diffusers (`down_blocks.N.`, `mid_block.`, `up_blocks.N.`) and the
original LDM single file ComfyUI loads (`input_blocks.N.`, `middle_block.`, `output_blocks.N.`
under `model.diffusion_model.`), converted by diffusers' `convert_ldm_unet_checkpoint`.

The two pipelines (StableDiffusionXLPipeline, StableDiffusionPipeline) both run classifier-free
guidance as one forward of twice the batch.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping

from runtime.dtypes import DType
from runtime.families.base import BlockInputs, BlockList, FamilyAdapter
from runtime.families.inputs import random_tensors
from runtime.model_spec import model_spec
from runtime.workload import CfgMode, Workload

# The VAE of SD 1.5 and SDXL downsamples 8x; the UNet sees one latent pixel per 8x8 pixels.
PIXELS_PER_LATENT = 8
TEXT_TOKENS = 77  # CLIP's context
MID_TIMESTEP = 500  # of 1000 training timesteps
# Both releases have 2 resnets per down block (3 per up block): the LDM layout numbers its
# input_blocks 1 + 3 b + l and its output_blocks 3 b + l, which is how `block_of_tensor` maps
# original names to blocks. The converter itself reads the count from the model.
LDM_LAYERS_PER_BLOCK = 2
LDM_PREFIX = "model.diffusion_model."

_DIFFUSERS_BLOCK = re.compile(
    r"^(?:model\.diffusion_model\.|diffusion_model\.)?(?:(down_blocks|up_blocks)\.(\d+)|mid_block)\."
)
_ORIGINAL_BLOCK = re.compile(
    r"^(?:model\.diffusion_model\.|diffusion_model\.)?(?:(input_blocks|output_blocks)\.(\d+)|middle_block)\."
)

# SD 1.5: stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json (Hugging Face hub)
_SD15 = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
}
# SDXL base 1.0: stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (Hugging Face hub)
_SDXL = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048, "use_linear_projection": True, "norm_num_groups": 32,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}

MODELS = (
    model_spec(
        id="sdxl", family="unet", config=_SDXL, storage_dtype=DType.FP16,
        text_tokens=TEXT_TOKENS, default_steps=30, default_guidance=5.0, cfg=CfgMode.BATCHED,
        description="Stable Diffusion XL base 1.0, 2.6B UNet (two CLIP text encoders)",
        config_source="stabilityai/stable-diffusion-xl-base-1.0, unet/config.json",
        stated_params="2.6B",  # SDXL report (Podell et al. 2023): "2.6B parameters in the UNet"
    ),
    model_spec(
        id="sd1.5", family="unet", config=_SD15, storage_dtype=DType.FP16,
        text_tokens=TEXT_TOKENS, default_steps=30, default_guidance=7.5, cfg=CfgMode.BATCHED,
        default_resolution="512x512",
        description="Stable Diffusion 1.5, 860M UNet (one CLIP text encoder)",
        config_source="stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json",
        stated_params="0.86B",  # model card: "860M UNet"
    ),
    model_spec(
        id="tiny-sdxl", family="unet",
        config={
            "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": (8, 16, 32),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "transformer_layers_per_block": (1, 1, 2), "attention_head_dim": (2, 2, 4),
            "cross_attention_dim": 64, "use_linear_projection": True, "norm_num_groups": 4,
            "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 32,
        },
        storage_dtype=DType.FP32, text_tokens=TEXT_TOKENS, default_steps=2, default_guidance=5.0,
        cfg=CfgMode.BATCHED, default_resolution="64x64",
        description="tiny SDXL-shaped UNet for tests: 3 down, mid, 3 up blocks, runs on CPU in ms",
        config_source="ours (test model)",
    ),
    model_spec(
        id="tiny-sd15", family="unet",
        config={
            "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": (8, 16, 16, 32),
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "cross_attention_dim": 32, "attention_head_dim": 2, "norm_num_groups": 4,
        },
        storage_dtype=DType.FP32, text_tokens=TEXT_TOKENS, default_steps=2, default_guidance=7.5,
        cfg=CfgMode.BATCHED, default_resolution="64x64",
        description="tiny SD 1.5-shaped UNet for tests: 4 down, mid, 4 up blocks, runs on CPU in ms",
        config_source="ours (test model)",
    ),
)


class UNetAdapter(FamilyAdapter):
    name = "unet"
    diffusers_model = "UNet2DConditionModel"
    # SDXL and SD 1.5 folders load through the generic class, which reads model_index.json
    diffusers_pipeline = "DiffusionPipeline"
    block_lists = (
        BlockList(attr="down_blocks", kind="down", kind_per_block=True),
        BlockList(attr="mid_block", kind="mid", single=True),
        BlockList(attr="up_blocks", kind="up", kind_per_block=True),
    )
    denoiser = "unet"
    text_encoders = ("text_encoder", "text_encoder_2")  # SD 1.5 has no second: skipped

    catalog = MODELS

    # ------------------------------------------------------------------ names

    def block_of_tensor(self, tensor_name: str) -> str | None:
        match = _DIFFUSERS_BLOCK.match(tensor_name)
        if match:
            return f"{match.group(1)}.{int(match.group(2))}" if match.group(1) else "mid_block"
        match = _ORIGINAL_BLOCK.match(tensor_name)
        if not match:
            return None
        if not match.group(1):
            return "mid_block"
        index, per = int(match.group(2)), LDM_LAYERS_PER_BLOCK + 1
        if match.group(1) == "output_blocks":
            return f"up_blocks.{index // per}"
        return f"down_blocks.{(index - 1) // per}" if index > 0 else None  # 0 is conv_in

    def convert_original(self, state: dict, shapes: Mapping[str, tuple]) -> dict:
        """diffusers' LDM UNet converter, given the few config fields it reads (taken from the
        model's own tensor names) and the state under the LDM prefix it expects. It renames
        without copying, so the file tensors it used are the converted values themselves."""
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

        converted = convert_ldm_unet_checkpoint(
            {LDM_PREFIX + name: tensor for name, tensor in state.items()}, _ldm_config(shapes)
        )
        used = {id(tensor) for tensor in converted.values()}
        for name in [n for n, tensor in state.items() if id(tensor) in used]:
            del state[name]
        return converted

    # ------------------------------------------------------------------ inputs

    def block_inputs(self, model, kind: str, workload: Workload, device, dtype) -> BlockInputs:
        import torch


        args, kwargs = _block_signatures(_config_key(model.config), workload)[kind]
        rand = random_tensors(device, dtype)

        def make(value):
            return rand(*value.shape) if isinstance(value, _Shape) else value

        return BlockInputs(
            args=torch.utils._pytree.tree_map(make, args),
            kwargs=torch.utils._pytree.tree_map(make, kwargs),
        )

    def model_inputs(self, model, workload: Workload, device, dtype) -> dict[str, Any]:
        import torch


        config = model.config
        batch = workload.forward_batch
        rand = random_tensors(device, dtype)
        inputs = {
            "sample": rand(batch, config.in_channels, *latent_size(workload)),
            "timestep": torch.full((batch,), MID_TIMESTEP, device=device, dtype=dtype),
            "encoder_hidden_states": rand(batch, workload.text_tokens, config.cross_attention_dim),
            "return_dict": False,
        }
        if config.addition_embed_type == "text_time":  # SDXL: pooled text and six size ids
            time_ids = 6 * config.addition_time_embed_dim
            inputs["added_cond_kwargs"] = {
                "text_embeds": rand(batch, config.projection_class_embeddings_input_dim - time_ids),
                "time_ids": rand(batch, 6),
            }
        return inputs

    # ------------------------------------------------------------------ generation

    def prompt_kwargs(self, pipe, prompt: str, workload: Workload, guidance: float, device) -> dict:
        cfg = guidance > 1.0
        if hasattr(pipe, "text_encoder_2"):  # SDXL: two CLIPs, pooled embeddings
            embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
                prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            )
            kwargs = {"pooled_prompt_embeds": pooled}
            if cfg:
                kwargs["negative_pooled_prompt_embeds"] = negative_pooled
        else:
            embeds, negative = pipe.encode_prompt(
                prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            )
            kwargs = {}
        kwargs.update(prompt_embeds=embeds, guidance_scale=guidance)
        if cfg:
            kwargs["negative_prompt_embeds"] = negative
        return kwargs

    def decode(self, pipe, latents, workload: Workload) -> list:
        import torch

        vae = pipe.vae
        with torch.no_grad():
            mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
            if mean is not None and std is not None:
                mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
                std = torch.tensor(std).view(1, -1, 1, 1).to(latents)
                latents = latents * std / vae.config.scaling_factor + mean
            else:
                latents = latents / vae.config.scaling_factor
            if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
                vae.to(torch.float32)  # SDXL's VAE overflows in fp16, as the pipeline knows
            image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")


def latent_size(workload: Workload) -> tuple[int, int]:
    """(height, width) of the latent the UNet denoises."""
    return workload.height // PIXELS_PER_LATENT, workload.width // PIXELS_PER_LATENT


def _ldm_config(shapes: Mapping[str, tuple]) -> dict:
    """The config fields `convert_ldm_unet_checkpoint` reads, from the model's tensor names."""
    resnets = {name.split(".")[3] for name in shapes if name.startswith("down_blocks.0.resnets.")}
    config = {"layers_per_block": len(resnets)}
    if "add_embedding.linear_1.weight" in shapes:
        config["addition_embed_type"] = "text_time"
    if "class_embedding.linear_1.weight" in shapes:
        config["class_embed_type"] = "projection"
    return config


class _Shape:
    """A tensor's shape, recorded from the forward on `meta` (its values are drawn later)."""

    def __init__(self, shape) -> None:
        self.shape = tuple(shape)


class _Recorded(Exception):
    """Raised from the last block's hook: the rest of the forward is not needed."""


def _config_key(config) -> tuple:
    def frozen(value):
        return tuple(frozen(v) for v in value) if isinstance(value, (list, tuple)) else value

    return tuple(sorted((k, frozen(v)) for k, v in dict(config).items() if not k.startswith("_")))


@functools.lru_cache(maxsize=16)
def _block_signatures(config_key: tuple, workload: Workload) -> dict[str, tuple]:
    """For each block kind, the (args, kwargs) the UNet's forward passes that block at
    `workload`, tensors as `_Shape`s: one forward of the model built on `meta`."""
    import torch

    adapter = UNetAdapter()
    model = adapter.build(dict(config_key), device="meta", dtype=torch.float32)
    blocks = adapter.blocks(model)
    found: dict[str, tuple] = {}

    def shape_of(value):
        return _Shape(value.shape) if isinstance(value, torch.Tensor) else value

    def record(kind, last):
        def hook(module, args, kwargs):
            found[kind] = (
                torch.utils._pytree.tree_map(shape_of, args),
                torch.utils._pytree.tree_map(shape_of, dict(kwargs)),
            )
            if last:
                raise _Recorded

        return hook

    hooks = [
        block.register_forward_pre_hook(record(kind, i == len(blocks) - 1), with_kwargs=True)
        for i, (_, kind, block) in enumerate(blocks)
    ]
    try:
        with torch.no_grad():
            model(**adapter.model_inputs(model, workload, "meta", torch.float32))
    except _Recorded:
        pass
    finally:
        for hook in hooks:
            hook.remove()
    return found
