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

_LINEAR1 = re.compile(r"^single_blocks\.(\d+)\.linear1\.(weight|bias)$")
_LINEAR1_PARTS = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
# diffusers' converter splits single_blocks.N.linear1 at FLUX.1's width, which it hard-codes.
_FLUX1_LINEAR1_ROWS = 3 * 3072 + 4 * 3072

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

    def convert_original(self, state: dict, shapes: Mapping[str, tuple]) -> dict:
        """diffusers' FLUX converter, except for the one step it cannot do at every width.

        It splits each single block's fused `linear1` (q, k, v, mlp) at rows sized for FLUX.1's
        width 3072, so any other width (a pruned or test model) fails there. The converter is
        given a meta stand-in of the shape it expects (no memory), and the real `linear1` is
        split here at the sizes the model's own q, k, v and mlp layers have.
        """
        import torch
        from diffusers.loaders.single_file_utils import (
            convert_flux_transformer_checkpoint_to_diffusers as convert,
        )

        fused = {}
        for name in [n for n in state if _LINEAR1.match(n)]:
            tensor = state.pop(name)
            fused[name] = tensor
            stand_in = (_FLUX1_LINEAR1_ROWS, *tensor.shape[1:])
            state[name] = torch.empty(stand_in, dtype=tensor.dtype, device="meta")
        converted = convert(state)
        for name, tensor in fused.items():
            index, kind = _LINEAR1.match(name).groups()
            targets = [f"single_transformer_blocks.{index}.{part}.{kind}" for part in _LINEAR1_PARTS]
            if any(target not in shapes for target in targets):
                continue  # a block the model lacks: its stand-ins are refused as unknown names
            sizes = [shapes[target][0] for target in targets]
            if tensor.shape[0] != sum(sizes):
                raise RuntimeError(
                    f"{name} has {tensor.shape[0]} rows but the model's q, k, v and mlp take "
                    f"{sum(sizes)}"
                )
            converted.update(zip(targets, torch.split(tensor, sizes, dim=0)))
        return converted

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
