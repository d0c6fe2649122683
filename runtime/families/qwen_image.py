"""Qwen-Image (diffusers `QwenImageTransformer2DModel`): 60 dual-stream MMDiT blocks in the
released 20B model, one block list, no single-stream blocks.

Checkpoint namings: Qwen releases diffusers folders only, and ComfyUI's model
(`comfy/ldm/qwen_image/model.py`) names its modules as diffusers does, so the single files
ComfyUI loads (Comfy-Org/Qwen-Image_ComfyUI) carry diffusers names, bare or under ComfyUI's
`model.diffusion_model.` prefix. There is no other naming to convert from.

Guidance is true CFG: `QwenImagePipeline` runs the conditional and the unconditional
(negative prompt) forward one after the other in every step (`CfgMode.SEQUENTIAL`).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from runtime.dtypes import DType
from runtime.families.base import CHECKPOINT_PREFIX, BlockInputs, BlockList, FamilyAdapter, block_tensor_names
from runtime.families.inputs import random_tensors
from runtime.model_spec import model_spec
from runtime.workload import CfgMode, Workload

_BLOCK_NAME = re.compile(
    CHECKPOINT_PREFIX + r"transformer_blocks\.(\d+)\.(.+)$"
)

# Latent pixels per token side: the VAE downsamples 8x and the pipeline packs 2x2 patches.
PIXELS_PER_TOKEN_SIDE = 16
# The negative prompt Qwen's model card runs true CFG with (an empty prompt enables it too).
NEGATIVE_PROMPT = " "

# Qwen/Qwen-Image, transformer/config.json (Hugging Face hub); diffusers' class defaults are
# these numbers. The file also lists pooled_projection_dim 768, which the class does not take.
_QWEN_IMAGE = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "guidance_embeds": False,
    "axes_dims_rope": (16, 56, 56),
}

MODELS = (
    model_spec(
        id="qwen-image", family="qwen-image", config=_QWEN_IMAGE,
        # 512: the pipeline's default max_sequence_length, the longest prompt it encodes
        storage_dtype=DType.BF16, text_tokens=512, default_steps=50, default_guidance=4.0,
        cfg=CfgMode.SEQUENTIAL,
        description="Qwen-Image, 20B MMDiT with true CFG (two forwards per step)",
        config_source="Qwen/Qwen-Image, transformer/config.json", stated_params="20B",
    ),
    model_spec(
        id="tiny-qwen-image", family="qwen-image",
        config={
            "patch_size": 2, "in_channels": 16, "out_channels": 4, "num_layers": 4,
            "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
            "guidance_embeds": False, "axes_dims_rope": (4, 6, 6),
        },
        storage_dtype=DType.FP32, text_tokens=16, default_steps=2, default_guidance=4.0,
        cfg=CfgMode.SEQUENTIAL,
        description="tiny Qwen-Image for tests: 4 dual-stream blocks, runs on CPU in ms",
        config_source="ours (test model)",
    ),
)


class QwenImageAdapter(FamilyAdapter):
    name = "qwen-image"
    diffusers_model = "QwenImageTransformer2DModel"
    diffusers_pipeline = "QwenImagePipeline"
    block_lists = (BlockList(attr="transformer_blocks", kind="dual"),)
    text_encoders = ("text_encoder",)

    catalog = MODELS

    def build(self, config, device: str = "meta", dtype=None):
        """As the base class builds it, but with the rotary tables on the CPU.

        `QwenEmbedRope` computes its frequency tables in `__init__` and keeps them as plain
        attributes (not buffers), so a model built on `meta` would hold meta tables that
        `to_empty` never materialises and no forward off `meta` could read. Built on the CPU
        (2 MB, no parameters), they are copied to whatever device a forward runs on, `meta`
        included, as the module itself does.
        """
        import torch

        model = super().build(config, device=device, dtype=dtype)
        with torch.device("cpu"):
            pos_embed = type(model.pos_embed)(
                theta=model.pos_embed.theta, axes_dim=list(model.pos_embed.axes_dim),
                scale_rope=model.pos_embed.scale_rope,
            )
        model.pos_embed = pos_embed
        return model

    def block_of_tensor(self, tensor_name: str) -> str | None:
        match = _BLOCK_NAME.match(tensor_name)
        if not match or match.group(2) not in _block_tensor_names():
            return None
        return f"transformer_blocks.{int(match.group(1))}"

    def block_inputs(self, model, kind: str, workload: Workload, device, dtype) -> BlockInputs:
        config = model.config
        dim = config.num_attention_heads * config.attention_head_dim
        batch = workload.forward_batch
        rand = random_tensors(device, dtype)
        vid_freqs, txt_freqs = model.pos_embed(
            img_shapes_of(workload), max_txt_seq_len=workload.text_tokens, device="cpu"
        )
        kwargs = {
            "hidden_states": rand(batch, image_tokens_of(workload), dim),
            "encoder_hidden_states": rand(batch, workload.text_tokens, dim),
            # One prompt per forward leaves no padding: the pipeline then passes no mask.
            "encoder_hidden_states_mask": None,
            "temb": rand(batch, dim),
            "image_rotary_emb": (vid_freqs.to(device), txt_freqs.to(device)),
        }
        return BlockInputs(args=(), kwargs=kwargs)

    def model_inputs(self, model, workload: Workload, device, dtype) -> dict[str, Any]:
        import torch

        config = model.config
        batch = workload.forward_batch
        rand = random_tensors(device, dtype)
        return {
            "hidden_states": rand(batch, image_tokens_of(workload), config.in_channels),
            "encoder_hidden_states": rand(batch, workload.text_tokens, config.joint_attention_dim),
            "encoder_hidden_states_mask": None,
            "timestep": torch.full((batch,), 0.5, device=device, dtype=dtype),
            "img_shapes": img_shapes_of(workload),
            "return_dict": False,
        }

    # ------------------------------------------------------------------ generation

    def prompt_kwargs(self, pipe, prompt: str, workload: Workload, guidance: float, device) -> dict:
        embeds, mask = pipe.encode_prompt(
            prompt, device=device, max_sequence_length=workload.text_tokens
        )
        kwargs = {
            "prompt_embeds": embeds, "prompt_embeds_mask": mask,
            "max_sequence_length": workload.text_tokens, "true_cfg_scale": guidance,
        }
        if workload.cfg is not CfgMode.NONE and guidance > 1.0:
            negative, negative_mask = pipe.encode_prompt(
                NEGATIVE_PROMPT, device=device, max_sequence_length=workload.text_tokens
            )
            kwargs |= {"negative_prompt_embeds": negative, "negative_prompt_embeds_mask": negative_mask}
        else:
            kwargs["true_cfg_scale"] = 1.0  # guidance off: one forward per step
        return kwargs

    def decode(self, pipe, latents, workload: Workload) -> list:
        import torch

        vae = pipe.vae
        with torch.no_grad():
            latents = pipe._unpack_latents(latents, workload.height, workload.width, pipe.vae_scale_factor)
            latents = latents.to(vae.dtype)
            shape = (1, vae.config.z_dim, 1, 1, 1)
            mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
            std = torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
            latents = latents * std + mean
            image = vae.decode(latents, return_dict=False)[0][:, :, 0]
        return pipe.image_processor.postprocess(image, output_type="pil")


def image_tokens_of(workload: Workload) -> int:
    """Tokens the transformer sees for the image: one per 16x16 pixels."""
    side = PIXELS_PER_TOKEN_SIDE
    return (workload.height // side) * (workload.width // side)


def img_shapes_of(workload: Workload) -> list:
    """The pipeline's `img_shapes`: per image, its (frames, token rows, token columns)."""
    side = PIXELS_PER_TOKEN_SIDE
    return [[(1, workload.height // side, workload.width // side)]] * workload.forward_batch


@functools.cache
def _block_tensor_names() -> frozenset[str]:
    """Tensor names inside one block (`img_mod.1.weight`, `attn.to_q.weight`, ...), read off
    a block built on `meta`: the names do not depend on the widths. Other families' blocks
    under `transformer_blocks.N.` (FLUX's `norm1`, `ff`) are not claimed."""
    return block_tensor_names(MODELS[-1], "transformer_blocks", _block)


def _block():
    from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformerBlock

    return QwenImageTransformerBlock(dim=32, num_attention_heads=2, attention_head_dim=16)
