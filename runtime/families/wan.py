"""Wan 2.1 and 2.2 (diffusers `WanTransformer3DModel`): one list of identical blocks, `blocks`
(40 in the 14B models, 30 in the 1.3B and 5B).

Tokens: the VAE compresses 4x in time (clips of 4k+1 frames become k+1 latent frames) and 8x
in space (16x for Wan 2.2's 48-channel VAE of the TI2V-5B), then the transformer patches
(1, 2, 2). An 832x480 clip of 81 frames is 21 x 30 x 52 = 32,760 tokens.

Wan 2.2 A14B is two transformers of one architecture: `transformer` denoises the high-noise
steps and `transformer_2` the steps after `boundary_ratio` (0.875). The catalog entry is one
expert; the pipeline holds two of them.

Checkpoint namings: diffusers (`blocks.N.attn1.to_q`) and the original Wan release as ComfyUI
loads it (`blocks.N.self_attn.q`, `head.head`, `modulation`), possibly under a
`model.diffusion_model.` prefix. Both name the blocks `blocks.N`, so the naming is told apart
by what follows the block path.
"""

from __future__ import annotations

import dataclasses
import re
from types import SimpleNamespace
from typing import Any, Mapping

from runtime.dtypes import DType
from runtime.errors import UserError
from runtime.families.base import BlockInputs, BlockList, FamilyAdapter
from runtime.families.inputs import random_tensors
from runtime.model_spec import Experts, model_spec
from runtime.workload import CfgMode, Workload

_PREFIX = r"^(?:model\.diffusion_model\.|diffusion_model\.)?"
_DIFFUSERS_PARTS = r"attn1|attn2|norm2|ffn\.net|scale_shift_table"
_ORIGINAL_PARTS = r"self_attn|cross_attn|norm3|ffn\.\d|modulation"
_BLOCK_NAME = re.compile(_PREFIX + rf"blocks\.(\d+)\.(?:{_DIFFUSERS_PARTS}|{_ORIGINAL_PARTS})(?:\.|$)")
_ORIGINAL_REST = re.compile(rf"^(?:{_ORIGINAL_PARTS})(?:\.|$)")


@dataclasses.dataclass(frozen=True)
class WanVae:
    """What the VAE a transformer pairs with does to a clip, and how the pipeline times it."""

    temporal: int  # frames per latent frame after the first
    spatial: int  # pixels per latent pixel, each side
    per_token_timesteps: bool  # Wan 2.2 TI2V: a timestep per token (`expand_timesteps`)


# Keyed by latent channels (the transformer's `in_channels`), which is what tells them apart.
# Wan-AI/Wan2.1-T2V-14B-Diffusers vae/config.json: z_dim 16, scale factors 4 and 8.
# Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json: z_dim 48, scale factors 4 and 16; its
# pipeline runs with expand_timesteps (model_index.json).
# Image-to-video (Wan2.1-I2V-14B-*, Wan2.2-I2V-A14B): the z_dim-16 VAE, and the transformer
# takes 36 channels, the noise's 16 concatenated with the first frame's latents (16) and a
# 4-channel mask (WanImageToVideoPipeline.prepare_latents): the token count is the noise's.
_VAES = {16: WanVae(4, 8, False), 36: WanVae(4, 8, False), 48: WanVae(4, 16, True)}
I2V_CHANNELS = 36
# Wan 2.1 I2V's CLIP ViT-H/14 image embedding: 257 tokens (16x16 patches + class) that the
# transformer prepends to the text in every block's cross-attention (`image_dim` 1280).
IMAGE_TOKENS = 257

# The Wan team's configs (Wan-Video/Wan2.1 wan/configs/wan_t2v_{14B,1_3B}.py,
# Wan-Video/Wan2.2 wan/configs/wan_t2v_A14B.py and wan_ti2v_5B.py), as the diffusers repos
# Wan-AI/<model>-Diffusers store them in transformer/config.json.
_COMMON = {
    "patch_size": (1, 2, 2),
    "attention_head_dim": 128,
    "text_dim": 4096,  # umT5-XXL
    "freq_dim": 256,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
}
_14B = {**_COMMON, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40,
        "in_channels": 16, "out_channels": 16}
_1_3B = {**_COMMON, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30,
         "in_channels": 16, "out_channels": 16}
_5B = {**_COMMON, "num_attention_heads": 24, "ffn_dim": 14336, "num_layers": 30,
       "in_channels": 48, "out_channels": 48}
# Image-to-video: 36 input channels (above); Wan 2.1's adds the CLIP image embedding's
# projections to each block's cross-attention (`added_kv_proj_dim` = its width).
_I2V_14B = {**_14B, "in_channels": I2V_CHANNELS}
_I2V_21_14B = {**_I2V_14B, "image_dim": 1280, "added_kv_proj_dim": 5120}
_SOURCE = "Wan-AI/{}-Diffusers, transformer/config.json (Wan-Video/{} wan/configs/{})"
_TINY = {
    **_COMMON, "num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 64,
    "num_layers": 4, "in_channels": 16, "out_channels": 16, "text_dim": 32,
    "freq_dim": 32, "rope_max_seq_len": 64,
}

MODELS = (
    model_spec(
        id="wan2.1-t2v-14b", family="wan", config=_14B, storage_dtype=DType.BF16,
        text_tokens=512, default_steps=50, default_guidance=5.0, cfg=CfgMode.SEQUENTIAL,
        default_frames=81, default_resolution="1280x720",
        description="Wan 2.1 text-to-video, 14B transformer (umT5 text encoder, 8x VAE)",
        config_source=_SOURCE.format("Wan2.1-T2V-14B", "Wan2.1", "wan_t2v_14B.py"),
        stated_params="14B",
    ),
    model_spec(
        id="wan2.1-t2v-1.3b", family="wan", config=_1_3B, storage_dtype=DType.BF16,
        text_tokens=512, default_steps=50, default_guidance=5.0, cfg=CfgMode.SEQUENTIAL,
        default_frames=81, default_resolution="832x480",
        description="Wan 2.1 text-to-video, 1.3B transformer (umT5 text encoder, 8x VAE)",
        config_source=_SOURCE.format("Wan2.1-T2V-1.3B", "Wan2.1", "wan_t2v_1_3B.py"),
        # The name says 1.3B; the released config counts 1.419B (2.84 GB in bf16, the size of
        # the published bf16 file), outside the name's rounding, so no count is stated here.
        stated_params=None,
    ),
    model_spec(
        id="wan2.2-t2v-a14b", family="wan", config=_14B, storage_dtype=DType.BF16,
        text_tokens=512, default_steps=40, default_guidance=4.0, cfg=CfgMode.SEQUENTIAL,
        default_frames=81, default_resolution="1280x720",
        description=(
            "Wan 2.2 text-to-video A14B: one of its two 14B experts (27B in all); the "
            "pipeline runs `transformer` for high-noise steps and `transformer_2` after "
            "boundary_ratio 0.875 (guidance 4.0 then 3.0)"
        ),
        config_source=_SOURCE.format("Wan2.2-T2V-A14B", "Wan2.2", "wan_t2v_A14B.py"),
        stated_params="14B",  # per expert; the model card states 27B total, 14B active
        # wan_t2v_A14B.py: boundary 0.875, sample_shift 12.0, sample_steps 40,
        # sample_guide_scale (3.0, 4.0) for the low- and high-noise experts
        experts=Experts(("transformer", "transformer_2"), boundary_ratio=0.875, shift=12.0,
                        guidance_2=3.0),
    ),
    model_spec(
        id="wan2.2-ti2v-5b", family="wan", config=_5B, storage_dtype=DType.BF16,
        text_tokens=512, default_steps=50, default_guidance=5.0, cfg=CfgMode.SEQUENTIAL,
        default_frames=121, default_resolution="1280x704",
        description="Wan 2.2 text/image-to-video, 5B transformer (16x VAE, 48 latent channels)",
        config_source=_SOURCE.format("Wan2.2-TI2V-5B", "Wan2.2", "wan_ti2v_5B.py"),
        stated_params="5B",
    ),
    model_spec(
        id="wan2.1-i2v-14b-480p", family="wan", config=_I2V_21_14B, storage_dtype=DType.BF16,
        text_tokens=512, default_steps=50, default_guidance=5.0, cfg=CfgMode.SEQUENTIAL,
        default_frames=81, default_resolution="832x480",
        description=(
            "Wan 2.1 image-to-video 14B, 480p: 36 input channels (the first frame's latents and "
            "a mask beside the noise), a CLIP image embedding of 257 tokens in every block's "
            "cross-attention (WanImageToVideoPipeline)"
        ),
        config_source=_SOURCE.format("Wan2.1-I2V-14B-480P", "Wan2.1", "wan_i2v_14B.py"),
        stated_params=None,  # the name counts the 14B blocks; the image projections add more
    ),
    model_spec(
        id="wan2.2-i2v-a14b", family="wan", config=_I2V_14B, storage_dtype=DType.BF16,
        text_tokens=512, default_steps=40, default_guidance=3.5, cfg=CfgMode.SEQUENTIAL,
        default_frames=81, default_resolution="1280x720",
        description=(
            "Wan 2.2 image-to-video A14B: two 14B experts taking 36 input channels "
            "(WanImageToVideoPipeline), `transformer_2` after boundary_ratio 0.9"
        ),
        config_source=_SOURCE.format("Wan2.2-I2V-A14B", "Wan2.2", "wan_i2v_A14B.py"),
        stated_params="14B",  # per expert, as the text-to-video A14B
        # wan_i2v_A14B.py: boundary 0.900, sample_shift 5.0, sample_steps 40,
        # sample_guide_scale (3.5, 3.5)
        experts=Experts(("transformer", "transformer_2"), boundary_ratio=0.9, shift=5.0,
                        guidance_2=3.5),
    ),
    model_spec(
        id="tiny-wan", family="wan", config=_TINY,
        storage_dtype=DType.FP32, text_tokens=16, default_steps=2, default_guidance=5.0,
        cfg=CfgMode.SEQUENTIAL, default_frames=5, default_resolution="64x64",
        description="tiny Wan for tests: 4 blocks of width 32, runs on CPU in ms",
        config_source="ours (test model)",
    ),
    model_spec(
        id="tiny-wan-i2v", family="wan", config={**_TINY, "in_channels": I2V_CHANNELS},
        storage_dtype=DType.FP32, text_tokens=16, default_steps=2, default_guidance=5.0,
        cfg=CfgMode.SEQUENTIAL, default_frames=5, default_resolution="64x64",
        description="tiny Wan image-to-video for tests: tiny-wan's blocks taking 36 channels",
        config_source="ours (test model)",
    ),
    model_spec(
        id="tiny-wan-a14b", family="wan", config=_TINY,
        storage_dtype=DType.FP32, text_tokens=16, default_steps=4, default_guidance=5.0,
        cfg=CfgMode.SEQUENTIAL, default_frames=5, default_resolution="64x64",
        description="tiny Wan 2.2 A14B for tests: two tiny-wan experts, the second after boundary 0.5",
        config_source="ours (test model)",
        experts=Experts(("transformer", "transformer_2"), boundary_ratio=0.5, shift=3.0,
                        guidance_2=3.0),
    ),
)


class WanAdapter(FamilyAdapter):
    name = "wan"
    diffusers_model = "WanTransformer3DModel"
    diffusers_pipeline = "WanPipeline"
    variant_pipelines = ("WanImageToVideoPipeline",)  # 36 input channels: `--image` given
    block_lists = (BlockList(attr="blocks", kind="block"),)
    text_encoders = ("text_encoder",)

    catalog = MODELS

    def block_of_tensor(self, tensor_name: str) -> str | None:
        match = _BLOCK_NAME.match(tensor_name)
        return f"blocks.{int(match.group(1))}" if match else None

    def is_original_name(self, tensor_name: str, block: str) -> bool:
        rest = tensor_name.split(f"{block}.", 1)[-1]
        return bool(_ORIGINAL_REST.match(rest))

    def convert_original(self, state: dict, shapes: Mapping[str, tuple]) -> dict:
        """diffusers' own Wan converter: a renaming (no tensor is split or fused)."""
        from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

        return convert_wan_transformer_to_diffusers(state)

    # ------------------------------------------------------------------ inputs

    def block_inputs(self, model, kind: str, workload: Workload, device, dtype) -> BlockInputs:
        config = model.config
        dim = config.num_attention_heads * config.attention_head_dim
        batch = workload.forward_batch
        grid = token_grid(config, workload)
        tokens = grid[0] * grid[1] * grid[2]
        rand = random_tensors(device, dtype)
        if vae_of(config).per_token_timesteps:
            temb = rand(batch, tokens, 6, dim)
        else:
            temb = rand(batch, 6, dim)
        cos, sin = _rotary(config, workload)
        kwargs = {
            "hidden_states": rand(batch, tokens, dim),
            "encoder_hidden_states": rand(batch, context_tokens(config, workload), dim),
            "temb": temb,
            # in the model's dtype, as its rotary buffers are once loaded for a plan
            "rotary_emb": (cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)),
        }
        return BlockInputs(args=(), kwargs=kwargs)

    def model_inputs(self, model, workload: Workload, device, dtype) -> dict[str, Any]:
        import torch

        config = model.config
        batch = workload.forward_batch
        frames, height, width = latent_shape(config, workload)
        rand = random_tensors(device, dtype)
        if vae_of(config).per_token_timesteps:
            grid = token_grid(config, workload)
            timestep_shape = (batch, grid[0] * grid[1] * grid[2])
        else:
            timestep_shape = (batch,)
        return {
            "hidden_states": rand(batch, config.in_channels, frames, height, width),
            "timestep": torch.full(timestep_shape, 500.0, device=device, dtype=torch.float32),
            "encoder_hidden_states": rand(batch, workload.text_tokens, config.text_dim),
            "return_dict": False,
        } | ({"encoder_hidden_states_image": rand(batch, IMAGE_TOKENS, config.image_dim)}
             if config.image_dim else {})

    # ------------------------------------------------------------------ generation

    def check_workload(self, config, workload: Workload) -> None:
        latent_shape(SimpleNamespace(**config), workload)

    def prompt_kwargs(self, pipe, prompt: str, workload: Workload, guidance: float, device) -> dict:
        latent_shape(pipe.transformer.config, workload)  # refuses what the pipeline would round
        cfg = guidance > 1.0  # as WanPipeline.do_classifier_free_guidance
        embeds, negative = pipe.encode_prompt(
            prompt, negative_prompt="", do_classifier_free_guidance=cfg,
            max_sequence_length=workload.text_tokens, device=device,
        )
        kwargs = {
            "prompt_embeds": embeds, "guidance_scale": guidance, "num_frames": workload.frames,
            "max_sequence_length": workload.text_tokens,
        }
        if negative is not None:
            kwargs["negative_prompt_embeds"] = negative
        return kwargs

    def second_guidance_kwargs(self, pipe, guidance_2: float) -> dict:
        return {"guidance_scale_2": guidance_2} if pipe.config.get("boundary_ratio") is not None else {}

    def decode(self, pipe, latents, workload: Workload) -> list:
        import torch

        vae = pipe.vae
        z = vae.config.z_dim
        latents = latents.to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents)
        std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents)
        with torch.no_grad():
            video = vae.decode(latents * std + mean, return_dict=False)[0]
        return pipe.video_processor.postprocess_video(video, output_type="pil")[0]


# ---------------------------------------------------------------------- token counts


def vae_of(config) -> WanVae:
    try:
        return _VAES[config.in_channels]
    except KeyError:
        known = ", ".join(str(c) for c in _VAES)
        raise UserError(
            f"this Wan transformer takes {config.in_channels} latent channels, which no Wan "
            f"VAE makes (known: {known}): it is not a Wan text- or image-to-video model"
        ) from None


def context_tokens(config, workload: Workload) -> int:
    """Tokens each block's cross-attention reads: the text's, after the image embedding's
    where the model has one (Wan 2.1 I2V's `image_dim`)."""
    return workload.text_tokens + (IMAGE_TOKENS if config.image_dim else 0)


def latent_shape(config, workload: Workload) -> tuple[int, int, int]:
    """(frames, height, width) of the latents for `workload`; refuses sizes the pipeline would
    silently round."""
    vae = vae_of(config)
    _, patch_h, patch_w = config.patch_size
    if (workload.frames - 1) % vae.temporal:
        lower = (workload.frames - 1) // vae.temporal * vae.temporal + 1
        raise UserError(
            f"frames {workload.frames} is not usable for Wan: its VAE makes clips of "
            f"{vae.temporal}k+1 frames; give {lower} or {lower + vae.temporal}"
        )
    side_h, side_w = vae.spatial * patch_h, vae.spatial * patch_w
    if workload.height % side_h or workload.width % side_w:
        raise UserError(
            f"resolution {workload.resolution} is not usable for this Wan model: width must be "
            f"a multiple of {side_w} and height of {side_h} (its VAE's {vae.spatial}x and the "
            f"2x2 patches)"
        )
    frames = (workload.frames - 1) // vae.temporal + 1
    shape = frames, workload.height // vae.spatial, workload.width // vae.spatial
    _check_rope(config, workload, shape, vae)
    return shape


def _check_rope(config, workload: Workload, shape: tuple[int, int, int], vae) -> None:
    """Refuse a clip whose token grid is longer, on any axis, than the rotary table the model
    builds (`rope_max_seq_len` positions): its rope could not index those positions."""
    limit = config.rope_max_seq_len
    patch_t, patch_h, patch_w = config.patch_size
    if all(n // p <= limit for n, p in zip(shape, (patch_t, patch_h, patch_w))):
        return
    max_frames = (limit * patch_t - 1) * vae.temporal + 1
    raise UserError(
        f"{workload.frames} frames at {workload.resolution} are beyond this Wan model's rotary "
        f"table of {limit} positions per axis: give at most {max_frames} frames and sides of at "
        f"most {limit * patch_w * vae.spatial}x{limit * patch_h * vae.spatial}"
    )


def token_grid(config, workload: Workload) -> tuple[int, int, int]:
    """(frames, rows, columns) of tokens after the transformer's patching."""
    frames, height, width = latent_shape(config, workload)
    patch_t, patch_h, patch_w = config.patch_size
    return frames // patch_t, height // patch_h, width // patch_w


def video_tokens_of(config, workload: Workload) -> int:
    frames, rows, cols = token_grid(config, workload)
    return frames * rows * cols


def _rotary(config, workload: Workload):
    """The model's rotary tables for `workload`, computed on the CPU the way its `rope` does."""
    import torch
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    rope = WanRotaryPosEmbed(config.attention_head_dim, config.patch_size, config.rope_max_seq_len)
    shape = latent_shape(config, workload)
    return rope(torch.empty(1, config.in_channels, *shape, device="meta"))
