"""Z-Image (diffusers `ZImageTransformer2DModel`, the single-stream S3-DiT): three block lists,
run in this order by the forward: `noise_refiner` (image tokens alone, modulated by the
timestep), `context_refiner` (text tokens alone, no modulation, so smaller blocks), then
`layers` over the image and text tokens joined.

Each stream is padded to a multiple of 32 tokens before its refiner (`SEQ_MULTI_OF`), and
rotary embeddings are complex64 tables indexed by 3-axis position ids (text on the first axis,
the image on a frame/row/column grid after it); block inputs are made by the model's own
`patchify_and_embed` and `RopeEmbedder`, so they match its forward.

Checkpoint namings: diffusers (`layers.N.attention.to_q`) and the original Tongyi release
that ComfyUI loads (`layers.N.attention.qkv`, fused; `.attention.out`, `q_norm`/`k_norm`;
`x_embedder`/`final_layer` without the patch-size key), possibly under
`model.diffusion_model.`. The block paths are the same in both, so a tensor's naming is told
by its attention names (`is_original_name`); diffusers' own converter maps the original.

Z-Image-Turbo is distilled to run without CFG (guidance 0, 8 forwards for its 9 steps).
The text length the plan uses is the pipeline's `max_sequence_length`, 512: the most text
tokens the transformer sees (a prompt uses as many as it has, padded to 32).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from runtime.dtypes import DType
from runtime.errors import UserError
from runtime.families.base import BlockInputs, BlockList, FamilyAdapter, block_of, block_pattern
from runtime.families.inputs import random_tensors
from runtime.model_spec import model_spec
from runtime.workload import CfgMode, Workload

_BLOCK_NAME = block_pattern(("noise_refiner", "context_refiner", "layers"))
_ORIGINAL_ONLY = re.compile(r"\.attention\.(?:qkv|out|q_norm|k_norm)\.")
_DIFFUSERS_ONLY = re.compile(r"\.attention\.(?:to_q|to_k|to_v|to_out|norm_q|norm_k)\.")

VAE_SCALE = 8  # the FLUX.1 VAE Z-Image decodes with

# Tongyi-MAI/Z-Image-Turbo, transformer/config.json (Hugging Face hub); diffusers'
# ZImageTransformer2DModel defaults hold the same numbers except axes_lens.
_Z_IMAGE_TURBO = {
    "all_patch_size": (2,),
    "all_f_patch_size": (1,),
    "in_channels": 16,
    "dim": 3840,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "n_heads": 30,
    "n_kv_heads": 30,
    "norm_eps": 1e-05,
    "qk_norm": True,
    "cap_feat_dim": 2560,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
    "axes_dims": (32, 48, 48),
    "axes_lens": (1536, 512, 512),
}

MODELS = (
    model_spec(
        id="z-image-turbo", family="z-image", config=_Z_IMAGE_TURBO,
        storage_dtype=DType.BF16, text_tokens=512, default_steps=9, default_guidance=0.0,
        cfg=CfgMode.NONE,
        description="Z-Image-Turbo, 6B single-stream DiT distilled to 8 forwards, no CFG",
        config_source="Tongyi-MAI/Z-Image-Turbo, transformer/config.json", stated_params="6B",
    ),
    model_spec(
        id="tiny-z-image", family="z-image",
        config={
            "all_patch_size": (2,), "all_f_patch_size": (1,), "in_channels": 4, "dim": 32,
            "n_layers": 3, "n_refiner_layers": 2, "n_heads": 2, "n_kv_heads": 2,
            "norm_eps": 1e-05, "qk_norm": True, "cap_feat_dim": 24, "rope_theta": 256.0,
            "t_scale": 1000.0, "axes_dims": (4, 6, 6), "axes_lens": (128, 32, 32),
        },
        storage_dtype=DType.FP32, text_tokens=16, default_steps=2, default_guidance=0.0,
        default_resolution="64x64",
        description="tiny Z-Image for tests: 2 noise + 2 context refiner blocks, 3 layers",
        config_source="ours (test model)",
    ),
)


class ZImageAdapter(FamilyAdapter):
    name = "z-image"
    diffusers_model = "ZImageTransformer2DModel"
    diffusers_pipeline = "ZImagePipeline"
    block_lists = (
        BlockList(attr="noise_refiner", kind="noise-refiner"),
        BlockList(attr="context_refiner", kind="context-refiner"),
        BlockList(attr="layers", kind="main"),
    )
    text_encoders = ("text_encoder",)

    catalog = MODELS

    def block_of_tensor(self, tensor_name: str) -> str | None:
        return block_of(_BLOCK_NAME, tensor_name)

    def is_original_name(self, tensor_name: str, block: str) -> bool | None:
        if _ORIGINAL_ONLY.search(tensor_name):
            return True
        if _DIFFUSERS_ONLY.search(tensor_name):
            return False
        return None  # norms, feed-forward, modulation: spelled alike in both namings

    def block_inputs(self, model, kind: str, workload: Workload, device, dtype) -> BlockInputs:
        import torch

        config = model.config
        batch = workload.forward_batch
        rand = random_tensors(device, dtype)
        image_freqs, text_freqs = _rotary_tables(model, workload)
        freqs = {
            "noise-refiner": image_freqs,
            "context-refiner": text_freqs,
            "main": torch.cat([image_freqs, text_freqs]),  # the forward joins [image, text]
        }[kind]
        freqs = freqs.unsqueeze(0).expand(batch, -1, -1).contiguous().to(device)
        hidden = rand(batch, freqs.shape[1], config.dim)
        # one image per batch entry, all of one length: the forward passes no attention mask
        kwargs = {}
        if kind != "context-refiner":  # the context refiner has no modulation
            kwargs["adaln_input"] = rand(batch, min(config.dim, 256))
        return BlockInputs(args=(hidden, None, freqs), kwargs=kwargs)

    def model_inputs(self, model, workload: Workload, device, dtype) -> dict[str, Any]:
        import torch

        config = model.config
        _check_size(config, workload)
        batch = workload.forward_batch
        rand = random_tensors(device, dtype)
        height, width = workload.height // VAE_SCALE, workload.width // VAE_SCALE
        return {
            # the pipeline passes one (C, F=1, H, W) latent and one text sequence per entry
            "x": [rand(config.in_channels, 1, height, width) for _ in range(batch)],
            "t": torch.full((batch,), 0.5, device=device, dtype=dtype),  # (1000 - t) / 1000
            "cap_feats": [rand(workload.text_tokens, config.cap_feat_dim) for _ in range(batch)],
            "return_dict": False,
        }

    def convert_original(self, state: dict, shapes: Mapping[str, tuple]) -> dict:
        """diffusers' own Z-Image converter: renames, splits the fused qkv and pops every
        tensor it is given (names it does not know come back as unknown)."""
        from diffusers.loaders.single_file_utils import (
            convert_z_image_transformer_checkpoint_to_diffusers as convert,
        )

        return convert(state)

    # ------------------------------------------------------------------ generation

    def prompt_kwargs(self, pipe, prompt: str, workload: Workload, guidance: float, device) -> dict:
        cfg = guidance > 0  # the pipeline's own rule (do_classifier_free_guidance)
        if cfg and workload.cfg is CfgMode.NONE:
            raise UserError(
                f"guidance {guidance} makes ZImagePipeline run CFG at twice the batch, which "
                f"this plan was not tuned for: give --guidance 0"
            )
        embeds, negative = pipe.encode_prompt(
            prompt, device=device, do_classifier_free_guidance=cfg,
            max_sequence_length=workload.text_tokens,
        )
        kwargs = {
            "prompt_embeds": embeds, "guidance_scale": guidance,
            "max_sequence_length": workload.text_tokens,
        }
        if cfg:
            kwargs["negative_prompt_embeds"] = negative
        return kwargs

    def decode(self, pipe, latents, workload: Workload) -> list:
        import torch

        with torch.no_grad():
            latents = latents.to(pipe.vae.dtype)
            latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
            image = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")


def _check_size(config, workload: Workload) -> None:
    """Rotary tables cover `axes_lens` positions per axis (text, then the image's frame, rows,
    columns): refuse what they do not cover in one sentence (on `meta` nothing would fail)."""
    patch = VAE_SCALE * config.all_patch_size[0]
    rows, columns = workload.height // patch, workload.width // patch
    text = workload.text_tokens + (-workload.text_tokens) % 32
    if rows > config.axes_lens[1] or columns > config.axes_lens[2]:
        most = min(config.axes_lens[1], config.axes_lens[2]) * patch
        raise UserError(
            f"resolution {workload.resolution} is beyond this Z-Image model's rotary tables: "
            f"give at most {most} pixels a side"
        )
    if text + 1 >= config.axes_lens[0]:
        raise UserError(
            f"text length {workload.text_tokens} is beyond this Z-Image model's rotary tables: "
            f"give at most {(config.axes_lens[0] - 2) // 32 * 32} tokens"
        )


def _rotary_tables(model, workload: Workload):
    """(image, text) rotary tables, complex64 on the CPU, as the forward builds them: position
    ids from the model's own `patchify_and_embed` (padding included), looked up in a fresh
    `RopeEmbedder` of the model's config (the model's own one caches tables per device)."""
    import torch
    from diffusers.models.transformers.transformer_z_image import RopeEmbedder

    config = model.config
    height, width = workload.height // VAE_SCALE, workload.width // VAE_SCALE
    image = torch.zeros(config.in_channels, 1, height, width)
    text = torch.zeros(workload.text_tokens, 1)
    patch, frame_patch = config.all_patch_size[0], config.all_f_patch_size[0]
    images, texts, _, image_ids, text_ids, _, _ = model.patchify_and_embed(
        [image], [text], patch, frame_patch
    )
    rope = RopeEmbedder(
        theta=config.rope_theta, axes_dims=list(config.axes_dims), axes_lens=list(config.axes_lens)
    )
    # the text's id grid is made for its padded length and then padded again, so it holds
    # more ids than tokens; the forward cuts the table to the tokens (`_prepare_sequence`)
    return rope(image_ids[0])[: len(images[0])], rope(text_ids[0])[: len(texts[0])]
