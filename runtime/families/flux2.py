"""FLUX.2 (diffusers `Flux2Transformer2DModel`): 8 double-stream and 48 single-stream blocks
in FLUX.2 [dev], 32B parameters.

Unlike FLUX.1 the blocks hold no modulation of their own: three shared modulation modules
(`double_stream_modulation_img`/`_txt`, `single_stream_modulation`) turn the timestep and
guidance embedding into the shift/scale/gate vectors every block of a kind reads, so they are
non-block modules here. A single block takes the text and image tokens already joined
(`encoder_hidden_states=None`) with one fused q/k/v/mlp projection.

Checkpoint namings: diffusers (`transformer_blocks.N.`, `single_transformer_blocks.N.`) and the
original BFL single file ComfyUI loads (`double_blocks.N.`, `single_blocks.N.`, possibly under
`model.diffusion_model.`). The block prefixes are FLUX.1's, so a file is told apart by the
shared `single_stream_modulation` only FLUX.2 has (the key diffusers' single-file loader uses).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from runtime.dtypes import DType
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
from runtime.workload import Workload

_DIFFUSERS_LIST = {
    "transformer_blocks": "transformer_blocks",
    "double_blocks": "transformer_blocks",
    "single_transformer_blocks": "single_transformer_blocks",
    "single_blocks": "single_transformer_blocks",
}
_BLOCK_NAME = block_pattern(_DIFFUSERS_LIST)
# The shared single-stream modulation, in diffusers (`linear`) and original (`lin`) naming.
_MARKER = re.compile(CHECKPOINT_PREFIX + r"single_stream_modulation\.(?:linear|lin)\.weight$")

# Latent pixels per token side: the VAE downsamples 8x and the pipeline packs 2x2 patches.
PIXELS_PER_TOKEN_SIDE = 16

# huggingface/diffusers scripts/convert_flux2_to_diffusers.py, get_flux2_transformer_config
# ("flux2-dev", model_id black-forest-labs/FLUX.2-dev); guidance_embeds is the class default.
_FLUX_2_DEV = {
    "patch_size": 1,
    "in_channels": 128,
    "num_layers": 8,
    "num_single_layers": 48,
    "attention_head_dim": 128,
    "num_attention_heads": 48,
    "joint_attention_dim": 15360,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32),
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": True,
}

MODELS = (
    model_spec(
        id="flux2-dev", family="flux2", config=_FLUX_2_DEV,
        storage_dtype=DType.BF16, text_tokens=512, default_steps=50, default_guidance=4.0,
        description="FLUX.2 [dev], 32B guidance-distilled transformer (Mistral Small 3.1 text)",
        config_source="huggingface/diffusers scripts/convert_flux2_to_diffusers.py "
                      "(flux2-dev: black-forest-labs/FLUX.2-dev, transformer/config.json)",
        stated_params="32B",
    ),
    model_spec(
        id="tiny-flux2", family="flux2",
        config={
            "patch_size": 1, "in_channels": 16, "num_layers": 2, "num_single_layers": 4,
            "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 48,
            "timestep_guidance_channels": 32, "mlp_ratio": 3.0, "axes_dims_rope": (4, 4, 4, 4),
            "rope_theta": 2000, "eps": 1e-6, "guidance_embeds": True,
        },
        storage_dtype=DType.FP32, text_tokens=16, default_steps=2, default_guidance=4.0,
        description="tiny FLUX.2 for tests: 2 double + 4 single blocks, runs on CPU in ms",
        config_source="ours (test model)",
    ),
)


class Flux2Adapter(FamilyAdapter):
    name = "flux2"
    diffusers_model = "Flux2Transformer2DModel"
    diffusers_pipeline = "Flux2Pipeline"
    block_lists = (
        BlockList(attr="transformer_blocks", kind="double"),
        BlockList(attr="single_transformer_blocks", kind="single"),
    )
    text_encoders = ("text_encoder",)

    catalog = MODELS

    def block_of_tensor(self, tensor_name: str) -> str | None:
        return block_of(_BLOCK_NAME, tensor_name, _DIFFUSERS_LIST)

    def claims(self, tensor_names: Sequence[str]) -> int:
        """The whole file where it holds the shared single-stream modulation, else nothing:
        FLUX.1 and Chroma files use the same block prefixes but lack it."""
        return len(tensor_names) if any(_MARKER.match(n) for n in tensor_names) else 0

    def convert_original(self, state: dict, shapes: Mapping[str, tuple]) -> dict:
        """diffusers' own FLUX.2 converter (its q/k/v split is by thirds, any width works)."""
        from diffusers.loaders.single_file_utils import (
            convert_flux2_transformer_checkpoint_to_diffusers as convert,
        )

        try:
            return convert(state)
        except KeyError as e:  # a name inside a block that FLUX.2 blocks do not have
            raise ValueError(f"unknown original tensor part {e.args[0]!r}") from None

    # ------------------------------------------------------------------ inputs

    def block_inputs(self, model, kind: str, workload: Workload, device, dtype) -> BlockInputs:
        config = model.config
        dim = config.num_attention_heads * config.attention_head_dim
        batch = workload.forward_batch
        image_tokens = image_tokens_of(workload)
        text_tokens = workload.text_tokens
        rand = random_tensors(device, dtype)
        rotary = _rotary(config, workload, device)
        if kind == "double":
            kwargs = {
                "hidden_states": rand(batch, image_tokens, dim),
                "encoder_hidden_states": rand(batch, text_tokens, dim),
                "temb_mod_img": rand(batch, 6 * dim),
                "temb_mod_txt": rand(batch, 6 * dim),
                "image_rotary_emb": rotary,
            }
        else:  # the forward joins text and image tokens before the single blocks
            kwargs = {
                "hidden_states": rand(batch, text_tokens + image_tokens, dim),
                "encoder_hidden_states": None,
                "temb_mod": rand(batch, 3 * dim),
                "image_rotary_emb": rotary,
            }
        return BlockInputs(args=(), kwargs=kwargs)

    def model_inputs(self, model, workload: Workload, device, dtype) -> dict[str, Any]:
        import torch

        config = model.config
        batch = workload.forward_batch
        image_tokens = image_tokens_of(workload)
        rand = random_tensors(device, dtype)
        text_ids, image_ids = _position_ids(workload)
        inputs = {
            "hidden_states": rand(batch, image_tokens, config.in_channels),
            "encoder_hidden_states": rand(batch, workload.text_tokens, config.joint_attention_dim),
            "timestep": torch.full((batch,), 0.5, device=device, dtype=dtype),
            "img_ids": image_ids.to(device),
            "txt_ids": text_ids.to(device),
            "return_dict": False,
        }
        if config.guidance_embeds:
            inputs["guidance"] = torch.full((batch,), 4.0, device=device, dtype=dtype)
        return inputs

    # ------------------------------------------------------------------ generation

    def prompt_kwargs(self, pipe, prompt: str, workload: Workload, guidance: float, device) -> dict:
        embeds, _ = pipe.encode_prompt(
            prompt, device=device, max_sequence_length=workload.text_tokens
        )
        return {
            "prompt_embeds": embeds, "guidance_scale": guidance,
            "max_sequence_length": workload.text_tokens,
        }

    def decode(self, pipe, latents, workload: Workload) -> list:
        """As Flux2Pipeline does past the latents: scatter tokens back to the latent grid,
        undo the VAE's batch norm, unpatchify 2x2, decode."""
        import torch

        side = PIXELS_PER_TOKEN_SIDE
        batch, _, channels = latents.shape
        grid = torch.empty(batch, channels, workload.height // side, workload.width // side)
        ids = pipe._prepare_latent_ids(grid).to(latents.device)
        vae = pipe.vae
        with torch.no_grad():
            latents = pipe._unpack_latents_with_ids(latents, ids)
            mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
            latents = latents * std.to(latents.device, latents.dtype) + mean
            latents = pipe._unpatchify_latents(latents)
            image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")


def image_tokens_of(workload: Workload) -> int:
    """Tokens the transformer sees for the image: one per 16x16 pixels."""
    side = PIXELS_PER_TOKEN_SIDE
    return (workload.height // side) * (workload.width // side)


def _position_ids(workload: Workload):
    """(text ids, image ids) as Flux2Pipeline makes them, on the CPU: text tokens at
    (t, h, w, l) = (0, 0, 0, l), image tokens at (0, h, w, 0)."""
    import torch

    side = PIXELS_PER_TOKEN_SIDE
    zero = torch.arange(1)
    text = torch.cartesian_prod(zero, zero, zero, torch.arange(workload.text_tokens))
    rows, cols = torch.arange(workload.height // side), torch.arange(workload.width // side)
    image = torch.cartesian_prod(zero, rows, cols, zero)
    return text, image


def _rotary(config, workload: Workload, device):
    """The (cos, sin) tables of text then image tokens, as the model's forward joins them."""
    import torch
    from diffusers.models.transformers.transformer_flux2 import Flux2PosEmbed

    rope = Flux2PosEmbed(theta=config.rope_theta, axes_dim=list(config.axes_dims_rope))
    text, image = _position_ids(workload)
    cos, sin = rope(torch.cat([text, image], dim=0))
    return cos.to(device), sin.to(device)
