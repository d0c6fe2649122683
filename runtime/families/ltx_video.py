"""LTX-Video (diffusers `LTXVideoTransformer3DModel`): one list of identical blocks,
`transformer_blocks` (48 in the 13B of LTX-Video 0.9.7 / 0.9.8, 28 in the 2B).

Tokens: the VAE compresses 8x in time (clips of 8k+1 frames become k+1 latent frames) and 32x
in space, and the transformer patches (1, 1, 1): a 768x512 clip of 121 frames is
16 x 16 x 24 = 6,144 tokens. The pipeline packs the latents into a sequence before the
transformer (`LTXPipeline._pack_latents`), so the transformer's input is (batch, tokens,
channels), and runs CFG batched (negative and positive prompt in one forward of batch 2).

Checkpoint namings: diffusers, and the original Lightricks single file ComfyUI loads, under
`model.diffusion_model.` and carrying the VAE (`vae.`) beside the transformer. The original
names the blocks as diffusers does (`transformer_blocks.N.attn1.to_q`) and differs only in
`patchify_proj`, `adaln_single` and the attention norms (`q_norm` for `norm_q`), so the naming
of a block tensor shows in its attention norms only.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from runtime.dtypes import DType
from runtime.errors import UserError
from runtime.families.base import CHECKPOINT_PREFIX, BlockInputs, BlockList, FamilyAdapter
from runtime.families.inputs import random_tensors
from runtime.model_spec import model_spec
from runtime.workload import CfgMode, Workload

_BLOCK_NAME = re.compile(
    CHECKPOINT_PREFIX + r"transformer_blocks\.(\d+)\.(?:attn1|attn2|ff|scale_shift_table|norm1|norm2)(?:\.|$)"
)
# The attention norms of the first block, in either naming: no other family's blocks have
# an `attn1` with q/k norms at the top level (FLUX, SD3 and HunyuanVideo name it `attn`).
_MARKER = re.compile(CHECKPOINT_PREFIX + r"transformer_blocks\.0\.attn1\.(?:norm_q|q_norm)\.weight$")
_ORIGINAL_NORM = re.compile(r"(?:^|\.)[qk]_norm(?:\.|$)")
_DIFFUSERS_NORM = re.compile(r"(?:^|\.)norm_[qk](?:\.|$)")
_VAE = "vae."  # the VAE a ComfyUI LTX checkpoint carries beside the transformer

# What LTX-Video's VAE does to a clip (Lightricks/LTX-Video-0.9.7-dev, vae/config.json:
# patch_size 4 and three spatio-temporal downsamplings; every 0.9.x release alike).
VAE_TEMPORAL = 8  # frames per latent frame after the first
VAE_SPATIAL = 32  # pixels per latent pixel, each side
FRAME_RATE = 25  # LTXPipeline's default `frame_rate`: it scales the rotary positions in time

# diffusers scripts/convert_ltx_to_diffusers.py, get_transformer_config("0.9.7"): the config
# Lightricks/LTX-Video-0.9.7-dev (and 0.9.8-dev, same architecture) store in
# transformer/config.json.
_13B = {
    "in_channels": 128,
    "out_channels": 128,
    "patch_size": 1,
    "patch_size_t": 1,
    "num_attention_heads": 32,
    "attention_head_dim": 128,
    "cross_attention_dim": 4096,
    "num_layers": 48,
    "activation_fn": "gelu-approximate",
    "qk_norm": "rms_norm_across_heads",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "caption_channels": 4096,  # T5-XXL
    "attention_bias": True,
    "attention_out_bias": True,
}

MODELS = (
    model_spec(
        id="ltx-video-13b", family="ltx-video", config=_13B, storage_dtype=DType.BF16,
        # LTXPipeline's defaults: max_sequence_length 128, 50 steps, guidance 3 (batched CFG)
        text_tokens=128, default_steps=50, default_guidance=3.0, cfg=CfgMode.BATCHED,
        default_frames=121, default_resolution="768x512",
        description="LTX-Video 0.9.7 / 0.9.8 13B dev, text-to-video (T5 text encoder, 32x VAE)",
        config_source=(
            "Lightricks/LTX-Video-0.9.7-dev, transformer/config.json (diffusers "
            "scripts/convert_ltx_to_diffusers.py, version 0.9.7)"
        ),
        stated_params="13B",
    ),
    model_spec(
        id="tiny-ltx-video", family="ltx-video",
        config={
            **_13B, "in_channels": 8, "out_channels": 8, "num_attention_heads": 2,
            "attention_head_dim": 16, "cross_attention_dim": 32, "num_layers": 4,
            "caption_channels": 32,
        },
        storage_dtype=DType.FP32, text_tokens=16, default_steps=2, default_guidance=3.0,
        cfg=CfgMode.BATCHED, default_frames=9, default_resolution="64x64",
        description="tiny LTX-Video for tests: 4 blocks of width 32, runs on CPU in ms",
        config_source="ours (test model)",
    ),
)


class LTXVideoAdapter(FamilyAdapter):
    name = "ltx-video"
    diffusers_model = "LTXVideoTransformer3DModel"
    diffusers_pipeline = "LTXPipeline"
    block_lists = (BlockList(attr="transformer_blocks", kind="block"),)
    text_encoders = ("text_encoder",)

    catalog = MODELS

    def block_of_tensor(self, tensor_name: str) -> str | None:
        match = _BLOCK_NAME.match(tensor_name)
        return f"transformer_blocks.{int(match.group(1))}" if match else None

    def claims(self, tensor_names: Sequence[str]) -> int:
        """The whole file where its first block has LTX's `attn1` norms, else nothing: FLUX's
        and SD3's block names share the `transformer_blocks.N.` prefix."""
        return len(tensor_names) if any(_MARKER.match(n) for n in tensor_names) else 0

    def is_original_name(self, tensor_name: str, block: str) -> bool | None:
        rest = tensor_name.split(f"{block}.", 1)[-1]
        if _ORIGINAL_NORM.search(rest):
            return True
        if _DIFFUSERS_NORM.search(rest):
            return False
        return None  # spelled alike in both namings

    def convert_original(self, state: dict, shapes: Mapping[str, tuple]) -> dict:
        """diffusers' own LTX converter (a renaming). A ComfyUI checkpoint's VAE tensors are
        not the transformer's and are set aside first, as that converter does."""
        from diffusers.loaders.single_file_utils import (
            convert_ltx_transformer_checkpoint_to_diffusers as convert,
        )

        for name in [n for n in state if n.startswith(_VAE)]:
            state.pop(name)
        return convert(state)

    # ------------------------------------------------------------------ inputs

    def block_inputs(self, model, kind: str, workload: Workload, device, dtype) -> BlockInputs:
        import torch

        config = model.config
        dim = config.num_attention_heads * config.attention_head_dim
        batch = workload.forward_batch
        rand = random_tensors(device, dtype)
        cos, sin = _rotary(config, workload)
        # the forward turns the text mask into an additive bias of shape (batch, 1, text)
        bias = torch.zeros(batch, 1, workload.text_tokens, dtype=dtype)
        kwargs = {
            "hidden_states": rand(batch, video_tokens_of(config, workload), dim),
            "encoder_hidden_states": rand(batch, workload.text_tokens, dim),
            "temb": rand(batch, 1, 6 * dim),
            "image_rotary_emb": (cos.to(device), sin.to(device)),
            "encoder_attention_mask": bias.to(device),
        }
        return BlockInputs(args=(), kwargs=kwargs)

    def model_inputs(self, model, workload: Workload, device, dtype) -> dict[str, Any]:
        import torch

        config = model.config
        batch = workload.forward_batch
        frames, rows, cols = token_grid(config, workload)
        rand = random_tensors(device, dtype)
        channels = config.in_channels * config.patch_size_t * config.patch_size**2
        return {
            "hidden_states": rand(batch, frames * rows * cols, channels),
            "encoder_hidden_states": rand(batch, workload.text_tokens, config.caption_channels),
            "timestep": torch.full((batch,), 500.0, device=device, dtype=dtype),
            "encoder_attention_mask": torch.ones(
                batch, workload.text_tokens, device=device, dtype=torch.bool
            ),
            "num_frames": frames, "height": rows, "width": cols,
            "rope_interpolation_scale": _ROPE_SCALE,
            "return_dict": False,
        }

    # ------------------------------------------------------------------ generation

    def check_workload(self, config, workload: Workload) -> None:
        latent_shape(workload)

    def prompt_kwargs(self, pipe, prompt: str, workload: Workload, guidance: float, device) -> dict:
        latent_shape(workload)  # refuses what the pipeline would round
        cfg = guidance > 1.0  # as LTXPipeline.do_classifier_free_guidance
        if cfg and workload.cfg is CfgMode.NONE:
            raise UserError(
                f"guidance {guidance} makes LTXPipeline run CFG at twice the batch, which this "
                f"plan was not tuned for: give --guidance 1 or a plan tuned with CFG"
            )
        embeds, mask, negative, negative_mask = pipe.encode_prompt(
            prompt, negative_prompt="", do_classifier_free_guidance=cfg,
            max_sequence_length=workload.text_tokens, device=device,
        )
        kwargs = {
            "prompt_embeds": embeds, "prompt_attention_mask": mask, "guidance_scale": guidance,
            "num_frames": workload.frames, "frame_rate": FRAME_RATE,
            "max_sequence_length": workload.text_tokens,
        }
        if cfg:
            kwargs["negative_prompt_embeds"] = negative
            kwargs["negative_prompt_attention_mask"] = negative_mask
        return kwargs

    def decode(self, pipe, latents, workload: Workload) -> list:
        """As LTXPipeline decodes at its default `decode_timestep` 0 (no noise added)."""
        import torch

        vae, config = pipe.vae, pipe.transformer.config
        frames, height, width = latent_shape(workload)
        with torch.no_grad():
            latents = pipe._unpack_latents(
                latents, frames, height, width, config.patch_size, config.patch_size_t
            )
            latents = pipe._denormalize_latents(
                latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor
            ).to(vae.dtype)
            timestep = None
            if vae.config.timestep_conditioning:
                timestep = torch.zeros(latents.shape[0], device=latents.device, dtype=latents.dtype)
            video = vae.decode(latents, timestep, return_dict=False)[0]
        return pipe.video_processor.postprocess_video(video, output_type="pil")[0]


# ---------------------------------------------------------------------- token counts

# LTXPipeline's `rope_interpolation_scale` at its default frame rate
_ROPE_SCALE = (VAE_TEMPORAL / FRAME_RATE, VAE_SPATIAL, VAE_SPATIAL)


def latent_shape(workload: Workload) -> tuple[int, int, int]:
    """(frames, height, width) of the latents for `workload`; refuses sizes the pipeline would
    round or refuse."""
    if (workload.frames - 1) % VAE_TEMPORAL:
        lower = (workload.frames - 1) // VAE_TEMPORAL * VAE_TEMPORAL + 1
        raise UserError(
            f"frames {workload.frames} is not usable for LTX-Video: its VAE makes clips of "
            f"{VAE_TEMPORAL}k+1 frames; give {lower} or {lower + VAE_TEMPORAL}"
        )
    if workload.height % VAE_SPATIAL or workload.width % VAE_SPATIAL:
        raise UserError(
            f"resolution {workload.resolution} is not usable for LTX-Video: width and height "
            f"must be multiples of {VAE_SPATIAL} (its VAE's compression)"
        )
    frames = (workload.frames - 1) // VAE_TEMPORAL + 1
    return frames, workload.height // VAE_SPATIAL, workload.width // VAE_SPATIAL


def token_grid(config, workload: Workload) -> tuple[int, int, int]:
    """(frames, rows, columns) of tokens after the transformer's patching."""
    frames, height, width = latent_shape(workload)
    return frames // config.patch_size_t, height // config.patch_size, width // config.patch_size


def video_tokens_of(config, workload: Workload) -> int:
    frames, rows, cols = token_grid(config, workload)
    return frames * rows * cols


def _rotary(config, workload: Workload):
    """The model's rotary tables for `workload` (batch 1, broadcast over the batch), computed
    on the CPU the way its `rope` does."""
    import torch
    from diffusers.models.transformers.transformer_ltx import LTXVideoRotaryPosEmbed

    rope = LTXVideoRotaryPosEmbed(
        dim=config.num_attention_heads * config.attention_head_dim, base_num_frames=20,
        base_height=2048, base_width=2048, patch_size=config.patch_size,
        patch_size_t=config.patch_size_t, theta=10000.0,
    )
    frames, rows, cols = token_grid(config, workload)
    return rope(torch.empty(1, 0), frames, rows, cols, _ROPE_SCALE)
