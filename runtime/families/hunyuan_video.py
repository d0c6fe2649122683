"""HunyuanVideo (diffusers `HunyuanVideoTransformer3DModel`): three block lists, in the order
the forward runs them: the text token refiner's 2 blocks
(`context_embedder.token_refiner.refiner_blocks`, on the text tokens alone), 20 dual-stream
blocks (`transformer_blocks`) and 40 single-stream blocks (`single_transformer_blocks`).

Tokens: the VAE compresses 4x in time (clips of 4k+1 frames become k+1 latent frames) and 8x
in space, and the transformer patches (1, 2, 2): an 848x480 clip of 61 frames is
16 x 30 x 53 = 25,440 tokens. The released model is guidance-distilled (the guidance scale is
an input of the transformer): one forward per step, no CFG.

Checkpoint namings: diffusers, and the original Tencent single file ComfyUI loads
(`double_blocks.N.img_attn_qkv`, `single_blocks.N.linear1`,
`txt_in.individual_token_refiner.blocks.N.`), possibly under `model.diffusion_model.`. The
dual/single block prefixes are FLUX.1's in both namings, so a file is told apart by its token
refiner together with the CLIP pooled-text input (`vector_in`), which no other family has both
of.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

from runtime.dtypes import DType
from runtime.errors import UserError
from runtime.families.base import (
    CHECKPOINT_PREFIX,
    BlockInputs,
    BlockList,
    FamilyAdapter,
    block_of,
    block_pattern,
)
from runtime.families.inputs import random_tensors
from runtime.model_spec import model_spec
from runtime.workload import CfgMode, Workload

_DIFFUSERS_LIST = {
    "context_embedder.token_refiner.refiner_blocks": "context_embedder.token_refiner.refiner_blocks",
    "txt_in.individual_token_refiner.blocks": "context_embedder.token_refiner.refiner_blocks",
    "transformer_blocks": "transformer_blocks",
    "double_blocks": "transformer_blocks",
    "single_transformer_blocks": "single_transformer_blocks",
    "single_blocks": "single_transformer_blocks",
}
_BLOCK_NAME = block_pattern(_DIFFUSERS_LIST)
_REFINER = re.compile(
    CHECKPOINT_PREFIX + r"(?:context_embedder\.token_refiner\.refiner_blocks|"
    r"txt_in\.individual_token_refiner\.blocks)\.0\.norm1\.weight$"
)
_POOLED_TEXT = re.compile(
    CHECKPOINT_PREFIX + r"(?:time_text_embed\.text_embedder\.linear_1|vector_in\.in_layer)\.weight$"
)


# What HunyuanVideo's VAE does to a clip (hunyuanvideo-community/HunyuanVideo, vae/config.json:
# temporal_compression_ratio 4, spatial_compression_ratio 8).
VAE_TEMPORAL = 4
VAE_SPATIAL = 8

# diffusers scripts/convert_hunyuan_video_to_diffusers.py, TRANSFORMER_CONFIGS
# ["HYVideo-T/2-cfgdistill"]: the config hunyuanvideo-community/HunyuanVideo stores in
# transformer/config.json (Tencent/HunyuanVideo hyvideo/modules/models.py, HYVideo-T/2-cfgdistill).
_13B = {
    "in_channels": 16,
    "out_channels": 16,
    "num_attention_heads": 24,
    "attention_head_dim": 128,
    "num_layers": 20,
    "num_single_layers": 40,
    "num_refiner_layers": 2,
    "mlp_ratio": 4.0,
    "patch_size": 2,
    "patch_size_t": 1,
    "qk_norm": "rms_norm",
    "guidance_embeds": True,
    "text_embed_dim": 4096,  # llava-llama-3-8b
    "pooled_projection_dim": 768,  # CLIP ViT-L/14
    "rope_theta": 256.0,
    "rope_axes_dim": (16, 56, 56),
    "image_condition_type": None,
}

MODELS = (
    model_spec(
        id="hunyuanvideo", family="hunyuan-video", config=_13B, storage_dtype=DType.BF16,
        # HunyuanVideoPipeline's defaults: max_sequence_length 256, 50 steps, embedded
        # guidance 6.0 (true CFG only with a negative prompt and true_cfg_scale > 1)
        text_tokens=256, default_steps=50, default_guidance=6.0, cfg=CfgMode.NONE,
        default_frames=129, default_resolution="1280x720",
        description="HunyuanVideo text-to-video, 13B guidance-distilled transformer (Llama + CLIP)",
        config_source=(
            "hunyuanvideo-community/HunyuanVideo, transformer/config.json (diffusers "
            "scripts/convert_hunyuan_video_to_diffusers.py, HYVideo-T/2-cfgdistill)"
        ),
        stated_params="13B",
    ),
    model_spec(
        id="tiny-hunyuanvideo", family="hunyuan-video",
        config={
            **_13B, "in_channels": 4, "out_channels": 4, "num_attention_heads": 2,
            "attention_head_dim": 16, "num_layers": 2, "num_single_layers": 3,
            "text_embed_dim": 32, "pooled_projection_dim": 32, "rope_axes_dim": (4, 6, 6),
        },
        storage_dtype=DType.FP32, text_tokens=16, default_steps=2, default_guidance=6.0,
        cfg=CfgMode.NONE, default_frames=5, default_resolution="64x64",
        description="tiny HunyuanVideo for tests: 2 refiner + 2 dual + 3 single blocks of width 32",
        config_source="ours (test model)",
    ),
)


class HunyuanVideoAdapter(FamilyAdapter):
    name = "hunyuan-video"
    diffusers_model = "HunyuanVideoTransformer3DModel"
    diffusers_pipeline = "HunyuanVideoPipeline"
    block_lists = (
        BlockList(attr="context_embedder.token_refiner.refiner_blocks", kind="refiner"),
        BlockList(attr="transformer_blocks", kind="double"),
        BlockList(attr="single_transformer_blocks", kind="single"),
    )
    text_encoders = ("text_encoder", "text_encoder_2")

    catalog = MODELS

    def block_of_tensor(self, tensor_name: str) -> str | None:
        return block_of(_BLOCK_NAME, tensor_name, _DIFFUSERS_LIST)

    def claims(self, tensor_names: Sequence[str]) -> int:
        """The whole file where it holds both a token refiner and the pooled-text input, else
        nothing: FLUX.1 files have the same dual/single block names and the pooled-text input
        but no refiner; HunyuanImage has a refiner but no pooled CLIP text."""
        refiner = any(_REFINER.match(n) for n in tensor_names)
        pooled = any(_POOLED_TEXT.match(n) for n in tensor_names)
        return len(tensor_names) if refiner and pooled else 0

    def convert_original(self, state: dict, shapes: Mapping[str, tuple]) -> dict:
        """diffusers' HunyuanVideo converter, except for the one step it cannot do at every
        width: it splits each single block's fused `linear1` (q, k, v, mlp) at rows sized for
        width 3072. The converter is given a meta stand-in of that shape (no memory), and the
        real `linear1` is split here at the sizes the model's own layers have."""
        from diffusers.loaders.single_file_utils import convert_hunyuan_video_transformer_to_diffusers as convert

        from runtime.families.fused_linear1 import convert_splitting_linear1

        return convert_splitting_linear1(state, shapes, convert, renames_in_place=True)

    # ------------------------------------------------------------------ inputs

    def block_inputs(self, model, kind: str, workload: Workload, device, dtype) -> BlockInputs:
        import torch

        config = model.config
        dim = config.num_attention_heads * config.attention_head_dim
        batch = workload.forward_batch
        text = workload.text_tokens
        rand = random_tensors(device, dtype)
        if kind == "refiner":
            # the refiner's self-attention mask over the text tokens, as its forward builds it
            mask = torch.ones(batch, 1, text, text, dtype=torch.bool)
            return BlockInputs(
                args=(rand(batch, text, dim), rand(batch, dim), mask.to(device)), kwargs={}
            )
        frames, rows, cols = token_grid(config, workload)
        tokens = frames * rows * cols
        mask = torch.ones(batch, 1, 1, tokens + text, dtype=torch.bool)
        cos, sin = _rotary(config, workload)
        args = (
            rand(batch, tokens, dim), rand(batch, text, dim), rand(batch, dim), mask.to(device),
            (cos.to(device), sin.to(device)), None, rows * cols,
        )
        return BlockInputs(args=args, kwargs={})

    def model_inputs(self, model, workload: Workload, device, dtype) -> dict[str, Any]:
        import torch

        config = model.config
        batch = workload.forward_batch
        frames, height, width = latent_shape(config, workload)
        rand = random_tensors(device, dtype)
        inputs = {
            "hidden_states": rand(batch, config.in_channels, frames, height, width),
            "timestep": torch.full((batch,), 500.0, device=device, dtype=dtype),
            "encoder_hidden_states": rand(batch, workload.text_tokens, config.text_embed_dim),
            "encoder_attention_mask": torch.ones(
                batch, workload.text_tokens, device=device, dtype=dtype
            ),
            "pooled_projections": rand(batch, config.pooled_projection_dim),
            "return_dict": False,
        }
        if config.guidance_embeds:  # the pipeline's guidance input: scale x 1000
            inputs["guidance"] = torch.full((batch,), 6000.0, device=device, dtype=dtype)
        return inputs

    # ------------------------------------------------------------------ generation

    def check_workload(self, config, workload: Workload) -> None:
        latent_shape(SimpleNamespace(**config), workload)

    def prompt_kwargs(self, pipe, prompt: str, workload: Workload, guidance: float, device) -> dict:
        latent_shape(pipe.transformer.config, workload)  # refuses what the pipeline would round
        embeds, pooled, mask = pipe.encode_prompt(
            prompt, prompt_2=None, device=device, max_sequence_length=workload.text_tokens
        )
        return {
            "prompt_embeds": embeds, "pooled_prompt_embeds": pooled,
            "prompt_attention_mask": mask, "guidance_scale": guidance,
            "num_frames": workload.frames, "max_sequence_length": workload.text_tokens,
        }

    def decode(self, pipe, latents, workload: Workload) -> list:
        import torch

        vae = pipe.vae
        with torch.no_grad():
            latents = latents.to(vae.dtype) / vae.config.scaling_factor
            video = vae.decode(latents, return_dict=False)[0]
        return pipe.video_processor.postprocess_video(video, output_type="pil")[0]


# ---------------------------------------------------------------------- token counts


def latent_shape(config, workload: Workload) -> tuple[int, int, int]:
    """(frames, height, width) of the latents for `workload`; refuses sizes the pipeline would
    round or refuse."""
    if (workload.frames - 1) % VAE_TEMPORAL:
        lower = (workload.frames - 1) // VAE_TEMPORAL * VAE_TEMPORAL + 1
        raise UserError(
            f"frames {workload.frames} is not usable for HunyuanVideo: its VAE makes clips of "
            f"{VAE_TEMPORAL}k+1 frames; give {lower} or {lower + VAE_TEMPORAL}"
        )
    side = VAE_SPATIAL * config.patch_size
    if workload.height % side or workload.width % side:
        raise UserError(
            f"resolution {workload.resolution} is not usable for HunyuanVideo: width and height "
            f"must be multiples of {side} (its VAE's {VAE_SPATIAL}x and the "
            f"{config.patch_size}x{config.patch_size} patches)"
        )
    frames = (workload.frames - 1) // VAE_TEMPORAL + 1
    return frames, workload.height // VAE_SPATIAL, workload.width // VAE_SPATIAL


def token_grid(config, workload: Workload) -> tuple[int, int, int]:
    """(frames, rows, columns) of tokens after the transformer's patching."""
    frames, height, width = latent_shape(config, workload)
    return frames // config.patch_size_t, height // config.patch_size, width // config.patch_size


def video_tokens_of(config, workload: Workload) -> int:
    frames, rows, cols = token_grid(config, workload)
    return frames * rows * cols


def _rotary(config, workload: Workload):
    """The model's rotary tables for `workload`, computed on the CPU the way its `rope` does
    (it reads only the latents' shape: a broadcast view stands in for them)."""
    import torch
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoRotaryPosEmbed

    rope = HunyuanVideoRotaryPosEmbed(
        config.patch_size, config.patch_size_t, list(config.rope_axes_dim), config.rope_theta
    )
    shape = (1, config.in_channels, *latent_shape(config, workload))
    return rope(torch.zeros(()).expand(shape))
