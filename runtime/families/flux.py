"""FLUX.1 (diffusers `FluxTransformer2DModel`): 19 double-stream and 38 single-stream blocks
in the released models.

Checkpoint namings: diffusers (`transformer_blocks.N.`, `single_transformer_blocks.N.`) and the
original BFL/ComfyUI single file (`double_blocks.N.`, `single_blocks.N.`), the latter possibly
under a `model.diffusion_model.` prefix.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from runtime.families.base import BlockInputs, BlockList, FamilyAdapter
from runtime.workload import Workload

_BLOCK_NAME = re.compile(
    r"^(?:model\.diffusion_model\.|diffusion_model\.|transformer\.)?"
    r"(transformer_blocks|single_transformer_blocks|double_blocks|single_blocks)\.(\d+)\."
)
_DIFFUSERS_LIST = {
    "transformer_blocks": "transformer_blocks",
    "double_blocks": "transformer_blocks",
    "single_transformer_blocks": "single_transformer_blocks",
    "single_blocks": "single_transformer_blocks",
}

# Latent pixels per token side: the VAE downsamples 8x and the pipeline packs 2x2 patches.
PIXELS_PER_TOKEN_SIDE = 16


class FluxAdapter(FamilyAdapter):
    name = "flux"
    block_lists = (
        BlockList(attr="transformer_blocks", kind="double"),
        BlockList(attr="single_transformer_blocks", kind="single"),
    )

    def model_class(self) -> type:
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel

    def build(self, config: Mapping[str, Any], device: str = "meta", dtype=None):
        import torch

        with torch.device(device):
            model = self.model_class()(**dict(config))
        if dtype is not None:
            model = model.to(dtype)
        return model.eval()

    def block_of_tensor(self, tensor_name: str) -> str | None:
        match = _BLOCK_NAME.match(tensor_name)
        if not match:
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
        rand = _random_tensors(device, dtype)

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

    def model_inputs(self, model, workload: Workload, device, dtype) -> dict[str, Any]:
        import torch

        config = model.config
        batch = workload.forward_batch
        image_tokens = image_tokens_of(workload)
        rand = _random_tensors(device, dtype)
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


def image_tokens_of(workload: Workload) -> int:
    """Tokens the transformer sees for the image: one per 16x16 pixels."""
    side = PIXELS_PER_TOKEN_SIDE
    return (workload.height // side) * (workload.width // side)


def _random_tensors(device, dtype):
    """A seeded maker of random tensors, drawn on the CPU so every device gets the same values."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    return rand
