"""HunyuanImage 2.1 (diffusers `HunyuanImageTransformer2DModel`): in execution order, 2 token
refiner blocks (inside `context_embedder`, they refine the Qwen2.5-VL text states), 20
dual-stream and 40 single-stream blocks in the released 17B model.

Checkpoint namings: diffusers, and Tencent's original release that ComfyUI loads
(`txt_in.individual_token_refiner.blocks.N.`, `double_blocks.N.img_attn_q`,
`single_blocks.N.linear1_q`, `final_layer.`), with q, k and v split or fused (`img_attn_qkv`,
`single_blocks.N.linear1`), possibly under ComfyUI's `model.diffusion_model.` prefix.
diffusers has no single-file converter for this family; `original_names` follows its
conversion script (scripts/convert_hunyuan_image_to_diffusers.py).

The diffusers names of the dual and single blocks are FLUX.1's exactly; a FLUX file has no
refiner blocks, so inspect tells the two apart (runtime/checkpoint/inspect.py).

Guidance: the pipeline's guider (AdaptiveProjectedMixGuidance, CFG with APG) runs the
conditional and the unconditional forward one after the other (`CfgMode.SEQUENTIAL`).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping

from runtime.dtypes import DType
from runtime.errors import UserError
from runtime.families.base import CHECKPOINT_PREFIX, BlockInputs, BlockList, FamilyAdapter, block_tensor_names
from runtime.families.inputs import random_tensors
from runtime.model_spec import model_spec
from runtime.workload import CfgMode, Workload

REFINER = "context_embedder.token_refiner.refiner_blocks"
# The VAE downsamples 32x and the transformer patches 1x1: one token per 32x32 pixels.
PIXELS_PER_TOKEN_SIDE = 32
MLLM_TOKENS = 1000  # the pipeline pads Qwen2.5-VL's prompt to 1000 tokens
GLYPH_TOKENS = 128  # and ByT5's glyph text to 128; the blocks see both, concatenated

# hunyuanvideo-community/HunyuanImage-2.1-Diffusers, transformer/config.json, as diffusers'
# scripts/convert_hunyuan_image_to_diffusers.py writes it (model_type hunyuanimage2.1).
_HUNYUAN_IMAGE_21 = {
    "in_channels": 64,
    "out_channels": 64,
    "num_attention_heads": 28,
    "attention_head_dim": 128,
    "num_layers": 20,
    "num_single_layers": 40,
    "num_refiner_layers": 2,
    "patch_size": (1, 1),
    "qk_norm": "rms_norm",
    "guidance_embeds": False,
    "text_embed_dim": 3584,
    "text_embed_2_dim": 1472,
    "rope_theta": 256.0,
    "rope_axes_dim": (64, 64),
}

MODELS = (
    model_spec(
        id="hunyuanimage-2.1", family="hunyuan-image", config=_HUNYUAN_IMAGE_21,
        storage_dtype=DType.BF16, text_tokens=MLLM_TOKENS + GLYPH_TOKENS, default_steps=50,
        default_guidance=3.5, cfg=CfgMode.SEQUENTIAL, default_resolution="2048x2048",
        description="HunyuanImage 2.1, 17B MMDiT with CFG (two forwards per step), 2K images",
        config_source="hunyuanvideo-community/HunyuanImage-2.1-Diffusers, transformer/config.json",
        stated_params="17B",
    ),
    model_spec(
        id="tiny-hunyuanimage", family="hunyuan-image",
        config={
            "in_channels": 4, "out_channels": 4, "num_attention_heads": 2,
            "attention_head_dim": 16, "num_layers": 2, "num_single_layers": 3,
            "num_refiner_layers": 2, "patch_size": (1, 1), "qk_norm": "rms_norm",
            "guidance_embeds": False, "text_embed_dim": 32, "text_embed_2_dim": 24,
            "rope_theta": 256.0, "rope_axes_dim": (8, 8),
        },
        storage_dtype=DType.FP32, text_tokens=24, default_steps=2, default_guidance=3.5,
        cfg=CfgMode.SEQUENTIAL, default_resolution="128x128",
        description="tiny HunyuanImage for tests: 2 refiner + 2 dual + 3 single blocks",
        config_source="ours (test model)",
    ),
)

_BLOCK_NAME = re.compile(
    CHECKPOINT_PREFIX
    + r"(context_embedder\.token_refiner\.refiner_blocks|transformer_blocks|single_transformer_blocks"
    r"|txt_in\.individual_token_refiner\.blocks|double_blocks|single_blocks)\.(\d+)\.(.+)$"
)


# Tencent's list names -> diffusers'.
_DIFFUSERS_LIST = {
    "txt_in.individual_token_refiner.blocks": REFINER,
    "double_blocks": "transformer_blocks",
    "single_blocks": "single_transformer_blocks",
}
# Inside a block, Tencent's module -> diffusers' (each holding .weight and, most, .bias).
_PARTS = {
    REFINER: {
        "norm1": "norm1", "norm2": "norm2", "self_attn_proj": "attn.to_out.0",
        "mlp.fc1": "ff.net.0.proj", "mlp.fc2": "ff.net.2", "adaLN_modulation.1": "norm_out.linear",
    },
    "transformer_blocks": {
        "img_mod.linear": "norm1.linear", "txt_mod.linear": "norm1_context.linear",
        "img_attn_q": "attn.to_q", "img_attn_k": "attn.to_k", "img_attn_v": "attn.to_v",
        "img_attn_q_norm": "attn.norm_q", "img_attn_k_norm": "attn.norm_k",
        "img_attn_proj": "attn.to_out.0", "img_mlp.fc1": "ff.net.0.proj", "img_mlp.fc2": "ff.net.2",
        "txt_attn_q": "attn.add_q_proj", "txt_attn_k": "attn.add_k_proj",
        "txt_attn_v": "attn.add_v_proj", "txt_attn_q_norm": "attn.norm_added_q",
        "txt_attn_k_norm": "attn.norm_added_k", "txt_attn_proj": "attn.to_add_out",
        "txt_mlp.fc1": "ff_context.net.0.proj", "txt_mlp.fc2": "ff_context.net.2",
    },
    "single_transformer_blocks": {
        "modulation.linear": "norm.linear", "linear1_q": "attn.to_q", "linear1_k": "attn.to_k",
        "linear1_v": "attn.to_v", "linear1_mlp": "proj_mlp", "q_norm": "attn.norm_q",
        "k_norm": "attn.norm_k", "linear2.fc": "proj_out", "linear2": "proj_out",
    },
}
# Fused modules, split in this order at the sizes of the model's own layers.
_FUSED = {
    REFINER: {"self_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v")},
    "transformer_blocks": {
        "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
        "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    },
    "single_transformer_blocks": {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")},
}
_NON_BLOCK = {
    "img_in.proj": "x_embedder.proj",
    "byt5_in.layernorm": "context_embedder_2.norm",
    "byt5_in.fc1": "context_embedder_2.linear_1",
    "byt5_in.fc2": "context_embedder_2.linear_2",
    "byt5_in.fc3": "context_embedder_2.linear_3",
    "txt_in.input_embedder": "context_embedder.proj_in",
    "txt_in.t_embedder.mlp.0": "context_embedder.time_text_embed.timestep_embedder.linear_1",
    "txt_in.t_embedder.mlp.2": "context_embedder.time_text_embed.timestep_embedder.linear_2",
    "txt_in.c_embedder.linear_1": "context_embedder.time_text_embed.text_embedder.linear_1",
    "txt_in.c_embedder.linear_2": "context_embedder.time_text_embed.text_embedder.linear_2",
    "time_in.mlp.0": "time_guidance_embed.timestep_embedder.linear_1",
    "time_in.mlp.2": "time_guidance_embed.timestep_embedder.linear_2",
    "time_r_in.mlp.0": "time_guidance_embed.timestep_embedder_r.linear_1",
    "time_r_in.mlp.2": "time_guidance_embed.timestep_embedder_r.linear_2",
    "guidance_in.mlp.0": "time_guidance_embed.guidance_embedder.linear_1",
    "guidance_in.mlp.2": "time_guidance_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",  # (shift, scale) -> (scale, shift)
}
_SWAPPED = "final_layer.adaLN_modulation.1"


class HunyuanImageAdapter(FamilyAdapter):
    name = "hunyuan-image"
    diffusers_model = "HunyuanImageTransformer2DModel"
    diffusers_pipeline = "HunyuanImagePipeline"
    block_lists = (
        BlockList(attr=REFINER, kind="refiner"),
        BlockList(attr="transformer_blocks", kind="dual"),
        BlockList(attr="single_transformer_blocks", kind="single"),
    )
    text_encoders = ("text_encoder", "text_encoder_2")

    catalog = MODELS

    def block_of_tensor(self, tensor_name: str) -> str | None:
        match = _BLOCK_NAME.match(tensor_name)
        if not match:
            return None
        listed, index, rest = match.groups()
        attr = _DIFFUSERS_LIST.get(listed, listed)
        if rest not in _block_tensor_names(attr, original=attr != listed):
            return None
        return f"{attr}.{int(index)}"

    def convert_original(self, state: dict, shapes: Mapping[str, tuple]) -> dict:
        """Tencent's names to diffusers', as diffusers' conversion script maps them; fused
        q, k, v (and a single block's fused linear1: q, k, v, mlp) are split first."""
        converted = {}
        for name in list(state):
            converted.update(_converted(name, state, shapes))
        return converted

    # ------------------------------------------------------------------ inputs

    def block_inputs(self, model, kind: str, workload: Workload, device, dtype) -> BlockInputs:
        import torch

        config = model.config
        dim = config.num_attention_heads * config.attention_head_dim
        batch = workload.forward_batch
        text = workload.text_tokens
        rand = random_tensors(device, dtype)
        temb = rand(batch, dim)
        if kind == "refiner":
            # the refiner's self-attention mask: text token pairs, as its forward builds it
            mask = torch.ones(batch, 1, text, text, dtype=torch.bool, device=device)
            return BlockInputs(args=(rand(batch, text, dim), temb, mask), kwargs={})
        image = image_tokens_of(workload)
        cos, sin = _rope_tables(model, workload)
        mask = torch.ones(batch, 1, 1, image + text, dtype=torch.bool, device=device)
        kwargs = {"attention_mask": mask, "image_rotary_emb": (cos.to(device), sin.to(device))}
        return BlockInputs(args=(rand(batch, image, dim), rand(batch, text, dim), temb), kwargs=kwargs)

    def model_inputs(self, model, workload: Workload, device, dtype) -> dict[str, Any]:
        """The mllm and glyph text states arrive as one sequence (`encoder_hidden_states`):
        the forward's merge of the second one selects valid tokens by mask value, which no
        `meta` forward can do. The blocks see the same tokens either way; the refiner blocks
        then also see the 128 glyph positions (13% more text for 2 of 62 blocks)."""
        import torch

        config = model.config
        batch = workload.forward_batch
        rand = random_tensors(device, dtype)
        return {
            "hidden_states": rand(batch, config.in_channels, *_latent_size(workload)),
            "timestep": torch.full((batch,), 500.0, device=device, dtype=dtype),
            "encoder_hidden_states": rand(batch, workload.text_tokens, config.text_embed_dim),
            "encoder_attention_mask": torch.ones(batch, workload.text_tokens, dtype=torch.bool, device=device),
            "return_dict": False,
        }

    # ------------------------------------------------------------------ generation

    def check_workload(self, config, workload: Workload) -> None:
        side = PIXELS_PER_TOKEN_SIDE
        if workload.height % side or workload.width % side:
            raise UserError(
                f"resolution {workload.resolution} is not usable for HunyuanImage: its pipeline "
                f"rounds each side to a multiple of {side}; give e.g. "
                f"{workload.width // side * side or side}x{workload.height // side * side or side}"
            )

    def prompt_kwargs(self, pipe, prompt: str, workload: Workload, guidance: float, device) -> dict:
        embeds, mask, embeds_2, mask_2 = pipe.encode_prompt(prompt, device=device)
        kwargs = {
            "prompt_embeds": embeds, "prompt_embeds_mask": mask,
            "prompt_embeds_2": embeds_2, "prompt_embeds_mask_2": mask_2,
        }
        if pipe.transformer.config.guidance_embeds:  # the distilled model takes guidance as input
            kwargs["distilled_guidance_scale"] = guidance
        guided = workload.cfg is not CfgMode.NONE and guidance > 1.0
        for name in ("guider", "ocr_guider"):
            guider = getattr(pipe, name, None)
            if guider is not None:
                setattr(pipe, name, guider.new(guidance_scale=guidance, enabled=guided))
        if guided and pipe.guider is not None:
            # the pipeline's own negative prompt when none is given: the empty prompt
            negative = pipe.encode_prompt("", device=device)
            kwargs |= dict(zip(
                ("negative_prompt_embeds", "negative_prompt_embeds_mask",
                 "negative_prompt_embeds_2", "negative_prompt_embeds_mask_2"), negative,
            ))
        return kwargs

    def decode(self, pipe, latents, workload: Workload) -> list:
        import torch

        with torch.no_grad():
            latents = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
            image = pipe.vae.decode(latents, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")


def image_tokens_of(workload: Workload) -> int:
    rows, cols = _latent_size(workload)
    return rows * cols


def _latent_size(workload: Workload) -> tuple[int, int]:
    side = PIXELS_PER_TOKEN_SIDE
    return workload.height // side, workload.width // side


def _rope_tables(model, workload: Workload):
    """The rotary tables of the image tokens, made on the CPU by the model's own `rope`."""
    import torch

    latents = torch.empty(1, 1, *_latent_size(workload), device="cpu")
    return model.rope(latents)


def _converted(name: str, state: dict, shapes: Mapping[str, tuple]) -> list[tuple[str, Any]]:
    """The diffusers tensors one original tensor becomes (popped from `state`); none for a
    name this family does not know, which then stays in `state` as unknown."""
    import torch

    match = _BLOCK_NAME.match(name)
    module, _, kind = name.rpartition(".")
    if match is None:
        if module not in _NON_BLOCK:
            return []
        tensor = state.pop(name)
        if module == _SWAPPED:
            shift, scale = tensor.chunk(2, dim=0)
            tensor = torch.cat([scale, shift], dim=0)
        return [(f"{_NON_BLOCK[module]}.{kind}", tensor)]
    listed, index, rest = match.groups()
    attr = _DIFFUSERS_LIST.get(listed)
    part, _, kind = rest.rpartition(".")
    if attr is None:
        return []
    prefix = f"{attr}.{int(index)}."
    if part in _PARTS[attr]:
        return [(prefix + f"{_PARTS[attr][part]}.{kind}", state.pop(name))]
    if part not in _FUSED[attr]:
        return []
    targets = [prefix + f"{t}.{kind}" for t in _FUSED[attr][part]]
    if any(t not in shapes for t in targets):
        return []  # a block the model lacks: left as unknown
    sizes = [shapes[t][0] for t in targets]
    tensor = state.pop(name)
    if tensor.shape[0] != sum(sizes):
        raise RuntimeError(f"{name} has {tensor.shape[0]} rows but the model's layers take {sum(sizes)}")
    return list(zip(targets, torch.split(tensor, sizes, dim=0)))


@functools.cache
def _block_tensor_names(attr: str, original: bool) -> frozenset[str]:
    """Tensor names inside one block of list `attr`, in diffusers' naming (read off a block
    built on `meta`: names do not depend on widths) or Tencent's (from the tables above)."""
    if original:
        modules = [*_PARTS[attr], *_FUSED[attr]]
        return frozenset(f"{m}.{kind}" for m in modules for kind in ("weight", "bias"))
    return block_tensor_names(MODELS[-1], attr, lambda: _block(attr))


def _block(attr: str):
    from diffusers.models.transformers import transformer_hunyuanimage as hy

    return {
        REFINER: lambda: hy.HunyuanImageIndividualTokenRefinerBlock(2, 16),
        "transformer_blocks": lambda: hy.HunyuanImageTransformerBlock(2, 16, mlp_ratio=4.0),
        "single_transformer_blocks": lambda: hy.HunyuanImageSingleTransformerBlock(2, 16),
    }[attr]()
