"""FLUX.1 (diffusers `FluxTransformer2DModel`): 19 double-stream and 38 single-stream blocks
in the released models.

Checkpoint namings: diffusers (`transformer_blocks.N.`, `single_transformer_blocks.N.`) and the
original BFL/ComfyUI single file (`double_blocks.N.`, `single_blocks.N.`), the latter possibly
under a `model.diffusion_model.` prefix.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from runtime.dtypes import DType
from runtime.families.base import CHECKPOINT_PREFIX, BlockInputs, BlockList, FamilyAdapter
from runtime.families.inputs import random_tensors
from runtime.model_spec import model_spec
from runtime.workload import Workload

_BLOCK_NAME = re.compile(
    CHECKPOINT_PREFIX
    + r"(transformer_blocks|single_transformer_blocks|double_blocks|single_blocks)\.(\d+)\.([^.]+)\."
)
# The submodules a FLUX block holds under diffusers' list names: other families keep their
# blocks under the same names (Qwen-Image's `transformer_blocks.N.img_mod`), not FLUX's.
_DIFFUSERS_PARTS = {
    "transformer_blocks": {"norm1", "norm1_context", "attn", "ff", "ff_context"},
    "single_transformer_blocks": {"norm", "proj_mlp", "proj_out", "attn"},
}
_DIFFUSERS_LIST = {
    "transformer_blocks": "transformer_blocks",
    "double_blocks": "transformer_blocks",
    "single_transformer_blocks": "single_transformer_blocks",
    "single_blocks": "single_transformer_blocks",
}


# Latent pixels per token side: the VAE downsamples 8x and the pipeline packs 2x2 patches.
PIXELS_PER_TOKEN_SIDE = 16

# black-forest-labs/FLUX.1-dev and FLUX.1-schnell, transformer/config.json (Hugging Face hub)
_FLUX_1 = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "axes_dims_rope": (16, 56, 56),
}
_SOURCE = "black-forest-labs/{}, transformer/config.json"

MODELS = (
    model_spec(
        id="flux-dev", family="flux", config={**_FLUX_1, "guidance_embeds": True},
        storage_dtype=DType.BF16, text_tokens=512, default_steps=28, default_guidance=3.5,
        description="FLUX.1 [dev], 12B guidance-distilled transformer",
        config_source=_SOURCE.format("FLUX.1-dev"), stated_params="12B",
    ),
    model_spec(
        id="flux-schnell", family="flux", config={**_FLUX_1, "guidance_embeds": False},
        storage_dtype=DType.BF16, text_tokens=256, default_steps=4, default_guidance=0.0,
        description="FLUX.1 [schnell], 12B timestep-distilled transformer",
        config_source=_SOURCE.format("FLUX.1-schnell"), stated_params="12B",
    ),
    model_spec(
        id="tiny-flux", family="flux",
        config={
            "patch_size": 1, "in_channels": 16, "num_layers": 3, "num_single_layers": 5,
            "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
            "pooled_projection_dim": 32, "guidance_embeds": True, "axes_dims_rope": (4, 6, 6),
        },
        storage_dtype=DType.FP32, text_tokens=16, default_steps=2, default_guidance=3.5,
        description="tiny FLUX for tests: 3 double + 5 single blocks, runs on CPU in ms",
        config_source="ours (test model)",
    ),
)


class FluxAdapter(FamilyAdapter):
    name = "flux"
    diffusers_model = "FluxTransformer2DModel"
    diffusers_pipeline = "FluxPipeline"
    block_lists = (
        BlockList(attr="transformer_blocks", kind="double"),
        BlockList(attr="single_transformer_blocks", kind="single"),
    )
    text_encoders = ("text_encoder", "text_encoder_2")

    catalog = MODELS

    def block_of_tensor(self, tensor_name: str) -> str | None:
        match = _BLOCK_NAME.match(tensor_name)
        if not match or match.group(3) not in _DIFFUSERS_PARTS.get(match.group(1), {match.group(3)}):
            return None
        return f"{_DIFFUSERS_LIST[match.group(1)]}.{int(match.group(2))}"

    def block_inputs(self, model, kind: str, workload: Workload, device, dtype) -> BlockInputs:
        import torch
        from diffusers.models.transformers.transformer_flux import FluxPosEmbed

        config = model.config
        dim = config.num_attention_heads * config.attention_head_dim
        batch = workload.forward_batch
        image_tokens = image_tokens_of(workload)
        text_tokens = workload.text_tokens
        rand = random_tensors(device, dtype)

        ids = torch.zeros(text_tokens + image_tokens, 3)
        rope = FluxPosEmbed(theta=10000, axes_dim=list(config.axes_dims_rope))
        cos, sin = rope(ids)
        kwargs = {
            "hidden_states": rand(batch, image_tokens, dim),
            "encoder_hidden_states": rand(batch, text_tokens, dim),
            "temb": rand(batch, dim),
            "image_rotary_emb": (cos.to(device), sin.to(device)),
        }
        return BlockInputs(args=(), kwargs=kwargs)

    def convert_original(self, state: dict, shapes: Mapping[str, tuple]) -> dict:
        """diffusers' FLUX converter, except for the one step it cannot do at every width.

        It splits each single block's fused `linear1` (q, k, v, mlp) at rows sized for FLUX.1's
        width 3072, so any other width (a pruned or test model) fails there. The converter is
        given a meta stand-in of the shape it expects (no memory), and the real `linear1` is
        split here at the sizes the model's own q, k, v and mlp layers have.
        """
        from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers as convert

        from runtime.families.fused_linear1 import convert_splitting_linear1

        return convert_splitting_linear1(state, shapes, convert)

    def model_inputs(self, model, workload: Workload, device, dtype) -> dict[str, Any]:
        import torch

        config = model.config
        batch = workload.forward_batch
        image_tokens = image_tokens_of(workload)
        rand = random_tensors(device, dtype)
        inputs = {
            "hidden_states": rand(batch, image_tokens, config.in_channels),
            "encoder_hidden_states": rand(batch, workload.text_tokens, config.joint_attention_dim),
            "pooled_projections": rand(batch, config.pooled_projection_dim),
            "timestep": torch.full((batch,), 0.5, device=device, dtype=dtype),
            "img_ids": torch.zeros(image_tokens, 3, device=device, dtype=dtype),
            "txt_ids": torch.zeros(workload.text_tokens, 3, device=device, dtype=dtype),
            "return_dict": False,
        }
        if config.guidance_embeds:
            inputs["guidance"] = torch.full((batch,), 3.5, device=device, dtype=dtype)
        return inputs

    def prompt_kwargs(self, pipe, prompt: str, workload: Workload, guidance: float, device) -> dict:
        embeds, pooled, _ = pipe.encode_prompt(
            prompt, prompt_2=None, device=device, max_sequence_length=workload.text_tokens
        )
        return {
            "prompt_embeds": embeds, "pooled_prompt_embeds": pooled,
            "guidance_scale": guidance, "max_sequence_length": workload.text_tokens,
        }

    def decode(self, pipe, latents, workload: Workload) -> list:
        return decode_packed_latents(pipe, latents, workload)


def decode_packed_latents(pipe, latents, workload: Workload) -> list:
    """FLUX-style packed (2x2) latents through the pipeline's VAE to PIL images."""
    import torch

    height, width = workload.height, workload.width
    with torch.no_grad():
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="pil")


def image_tokens_of(workload: Workload) -> int:
    """Tokens the transformer sees for the image: one per 16x16 pixels."""
    side = PIXELS_PER_TOKEN_SIDE
    return (workload.height // side) * (workload.width // side)
