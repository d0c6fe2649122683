"""Stable Diffusion 3.5 (diffusers `SD3Transformer2DModel`, the MMDiT): one list of joint
blocks, `transformer_blocks`, run in order.

The blocks of that one list differ in size: the last one is `context_pre_only` (it updates
only the image stream, so it has no context feed-forward or context output projection), and in
SD3.5 Medium (MMDiT-X) the first 13 carry a second, image-only attention (`attn2`). They share
one kind, since they take the same inputs; the planner reads each block's own bytes.

Checkpoint namings: diffusers (`transformer_blocks.N.`) and the original Stability AI single
file that ComfyUI loads (`joint_blocks.N.x_block.` / `.context_block.`, q, k and v fused),
possibly under `model.diffusion_model.`; diffusers' own converter maps the latter.

True CFG: `StableDiffusion3Pipeline` batches the conditional and unconditional halves into
one forward of twice the batch (`torch.cat([latents] * 2)`), so the catalog says BATCHED.
The transformer's text sequence is CLIP's 77 tokens (both CLIP encoders, side by side in the
channels) followed by T5's `max_sequence_length` (256 by default): 333 in all.
"""

from __future__ import annotations

from typing import Any, Mapping

from runtime.dtypes import DType
from runtime.errors import UserError
from runtime.families.base import BlockInputs, BlockList, FamilyAdapter, block_of, block_pattern
from runtime.families.inputs import random_tensors
from runtime.model_spec import model_spec
from runtime.workload import CfgMode, Workload

_BLOCK_NAME = block_pattern(("transformer_blocks", "joint_blocks"))

# The VAE downsamples 8x; the transformer patches 2x2 latents into one token.
VAE_SCALE = 8
CLIP_TOKENS = 77  # both CLIP tokenizers' model_max_length in the released pipelines
T5_TOKENS = 256  # StableDiffusion3Pipeline's default max_sequence_length

# stabilityai/stable-diffusion-3.5-large and -medium, transformer/config.json (Hugging Face
# hub); the same numbers are in diffusers' SD3.5 docs and its single-file loader's inference
# of the config from `joint_blocks.N` (38 / 24 layers, 64 x heads = caption_projection_dim).
_SD35 = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "attention_head_dim": 64,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 2048,
    "qk_norm": "rms_norm",
}
_SOURCE = "stabilityai/{}, transformer/config.json"

MODELS = (
    model_spec(
        id="sd3.5-large", family="sd3",
        config={
            **_SD35, "num_layers": 38, "num_attention_heads": 38,
            "caption_projection_dim": 2432, "pos_embed_max_size": 192,
            "dual_attention_layers": (),
        },
        storage_dtype=DType.BF16, text_tokens=CLIP_TOKENS + T5_TOKENS, default_steps=28,
        default_guidance=3.5, cfg=CfgMode.BATCHED,
        description="Stable Diffusion 3.5 Large, 8.1B MMDiT with true CFG",
        config_source=_SOURCE.format("stable-diffusion-3.5-large"), stated_params="8.1B",
    ),
    model_spec(
        id="sd3.5-medium", family="sd3",
        config={
            **_SD35, "num_layers": 24, "num_attention_heads": 24,
            "caption_projection_dim": 1536, "pos_embed_max_size": 384,
            "dual_attention_layers": tuple(range(13)),
        },
        storage_dtype=DType.BF16, text_tokens=CLIP_TOKENS + T5_TOKENS, default_steps=40,
        default_guidance=4.5, cfg=CfgMode.BATCHED,
        description="Stable Diffusion 3.5 Medium, 2.5B MMDiT-X (dual attention in blocks 0-12)",
        config_source=_SOURCE.format("stable-diffusion-3.5-medium"), stated_params="2.5B",
    ),
    model_spec(
        id="tiny-sd3", family="sd3",
        config={
            "sample_size": 8, "patch_size": 2, "in_channels": 4, "out_channels": 4,
            "num_layers": 4, "attention_head_dim": 8, "num_attention_heads": 2,
            "joint_attention_dim": 32, "caption_projection_dim": 16,
            "pooled_projection_dim": 32, "pos_embed_max_size": 16,
            "dual_attention_layers": (0, 1), "qk_norm": "rms_norm",
        },
        storage_dtype=DType.FP32, text_tokens=16, default_steps=2, default_guidance=4.5,
        cfg=CfgMode.BATCHED, default_resolution="64x64",
        description="tiny SD3.5 for tests: 4 joint blocks (2 dual-attention, last context-pre-only)",
        config_source="ours (test model)",
    ),
)


class SD3Adapter(FamilyAdapter):
    name = "sd3"
    diffusers_model = "SD3Transformer2DModel"
    diffusers_pipeline = "StableDiffusion3Pipeline"
    block_lists = (BlockList(attr="transformer_blocks", kind="joint"),)
    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")

    catalog = MODELS

    def block_of_tensor(self, tensor_name: str) -> str | None:
        return block_of(_BLOCK_NAME, tensor_name, {"joint_blocks": "transformer_blocks"})

    def block_inputs(self, model, kind: str, workload: Workload, device, dtype) -> BlockInputs:
        config = model.config
        batch = workload.forward_batch
        rand = random_tensors(device, dtype)
        dim = config.num_attention_heads * config.attention_head_dim
        kwargs = {
            "hidden_states": rand(batch, image_tokens_of(workload, config.patch_size), dim),
            # context_embedder projects the text states to caption_projection_dim (= dim)
            "encoder_hidden_states": rand(batch, workload.text_tokens, config.caption_projection_dim),
            "temb": rand(batch, dim),
        }
        return BlockInputs(args=(), kwargs=kwargs)

    def model_inputs(self, model, workload: Workload, device, dtype) -> dict[str, Any]:
        import torch

        config = model.config
        _check_size(config, workload)
        batch = workload.forward_batch
        rand = random_tensors(device, dtype)
        return {
            "hidden_states": rand(
                batch, config.in_channels, workload.height // VAE_SCALE, workload.width // VAE_SCALE
            ),
            "encoder_hidden_states": rand(batch, workload.text_tokens, config.joint_attention_dim),
            "pooled_projections": rand(batch, config.pooled_projection_dim),
            # the pipeline passes scheduler timesteps (0..1000); mid-schedule
            "timestep": torch.full((batch,), 500.0, device=device, dtype=dtype),
            "return_dict": False,
        }

    def convert_original(self, state: dict, shapes: Mapping[str, tuple]) -> dict:
        """diffusers' own SD3 converter: it infers layers, dual-attention layers and qk-norm
        from the names, splits the fused qkv and pops what it maps."""
        from diffusers.loaders.single_file_utils import (
            convert_sd3_transformer_checkpoint_to_diffusers as convert,
        )

        return convert(state)

    # ------------------------------------------------------------------ generation

    def prompt_kwargs(self, pipe, prompt: str, workload: Workload, guidance: float, device) -> dict:
        t5_tokens = workload.text_tokens - pipe.tokenizer_max_length
        if t5_tokens < 1:
            raise UserError(
                f"text length {workload.text_tokens} leaves no T5 tokens after CLIP's "
                f"{pipe.tokenizer_max_length}: plan with a text length above "
                f"{pipe.tokenizer_max_length}"
            )
        cfg = guidance > 1.0  # the pipeline's own rule (do_classifier_free_guidance)
        if cfg and workload.cfg is CfgMode.NONE:
            raise UserError(
                f"guidance {guidance} makes StableDiffusion3Pipeline run CFG at twice the "
                f"batch, which this plan was not tuned for: give --guidance 1 or a plan tuned with CFG"
            )
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt, prompt_2=None, prompt_3=None, device=device,
            do_classifier_free_guidance=cfg, max_sequence_length=t5_tokens,
        )
        kwargs = {
            "prompt_embeds": embeds, "pooled_prompt_embeds": pooled,
            "guidance_scale": guidance, "max_sequence_length": t5_tokens,
        }
        if cfg:
            kwargs.update(negative_prompt_embeds=negative, negative_pooled_prompt_embeds=negative_pooled)
        return kwargs

    def decode(self, pipe, latents, workload: Workload) -> list:
        import torch

        with torch.no_grad():
            latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
            image = pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")


def _check_size(config, workload: Workload) -> None:
    """The learned position table covers `pos_embed_max_size` tokens a side: refuse larger
    images here, in one sentence, rather than deep inside the forward."""
    most = config.pos_embed_max_size * config.patch_size * VAE_SCALE
    if max(workload.height, workload.width) > most:
        raise UserError(
            f"resolution {workload.resolution} is beyond this SD3 model's position table: "
            f"give at most {most} pixels a side"
        )


def image_tokens_of(workload: Workload, patch_size: int = 2) -> int:
    """Tokens the transformer sees for the image: one per (8 x patch)^2 pixels."""
    side = VAE_SCALE * patch_size
    return (workload.height // side) * (workload.width // side)
