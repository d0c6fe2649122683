"""SDXL and SD 1.5 test support: tiny StableDiffusionXLPipeline / StableDiffusionPipeline and
the original LDM single-file naming (`input_blocks.N`, `middle_block`, `output_blocks.N` under
`model.diffusion_model.`), written here as the reverse of diffusers' converter."""

from __future__ import annotations

import re

TINY_MODELS = ("tiny-sdxl", "tiny-sd15")
APPLY_SIZE = (64, 64)
APPLY_FRAMES = 1

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_NON_BLOCK = {
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
}


def build_tiny_pipeline(model_id: str, seed: int = 0):
    """The tiny pipeline whose UNet is exactly the catalog's `model_id` (fp32, CPU)."""
    import torch
    from diffusers import (
        EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from runtime.catalog import get_model
    from runtime.families import get_family
    from tests.pipeline_fixtures import tiny_tokenizers, tiny_vae

    assert model_id in TINY_MODELS, model_id
    spec = get_model(model_id)
    torch.manual_seed(seed)
    unet = get_family("unet").build(spec.config, device="cpu")
    vae = tiny_vae(4, scaling_factor=0.13025 if model_id == "tiny-sdxl" else 0.18215,
                   quant_conv=True).eval()
    clip_tok, clip_vocab, _, _ = tiny_tokenizers()

    def clip(hidden: int, cls=CLIPTextModel, **extra):
        return cls(CLIPTextConfig(
            hidden_size=hidden, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
            vocab_size=clip_vocab, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
            pad_token_id=1, **extra,
        )).eval()

    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
    )
    if model_id == "tiny-sdxl":
        pooled = spec.config["projection_class_embeddings_input_dim"] - 6 * spec.config["addition_time_embed_dim"]
        return StableDiffusionXLPipeline(
            vae=vae, text_encoder=clip(spec.config["cross_attention_dim"] // 2),
            text_encoder_2=clip(spec.config["cross_attention_dim"] // 2, CLIPTextModelWithProjection,
                                projection_dim=pooled),
            tokenizer=clip_tok, tokenizer_2=clip_tok, unet=unet, scheduler=scheduler,
            add_watermarker=False,
        )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=clip(spec.config["cross_attention_dim"]), tokenizer=clip_tok,
        unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def to_original(state: dict) -> dict:
    """A diffusers-named UNet state dict under the LDM names ComfyUI loads (2 resnets per down
    block, as both releases and both tiny models have)."""
    with_attention = {int(m.group(1)) for m in map(re.compile(r"up_blocks\.(\d+)\.attentions\.").match, state) if m}
    return {
        "model.diffusion_model." + _original_name(name, with_attention): tensor
        for name, tensor in state.items()
    }


def _original_name(name: str, up_with_attention: set[int]) -> str:
    for ours, theirs in _NON_BLOCK.items():
        if name.startswith(ours + "."):
            return theirs + name[len(ours):]
    match = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)$", name)
    if match:
        part, index, rest = match.groups()
        return _inner(f"middle_block.{1 if part == 'attentions' else 2 * int(index)}", part, rest)
    match = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)$", name)
    side, block, part, index, rest = match.groups()
    block, index = int(block), int(index)
    if part == "downsamplers":  # after the block's two resnets
        return f"input_blocks.{3 * block + 3}.0.op.{rest.removeprefix('conv.')}"
    if part == "upsamplers":  # after the last resnet (and its attention, where it has one)
        return f"output_blocks.{3 * block + 2}.{2 if block in up_with_attention else 1}.{rest}"
    layer = 1 + 3 * block + index if side == "down" else 3 * block + index
    blocks = "input_blocks" if side == "down" else "output_blocks"
    return _inner(f"{blocks}.{layer}.{0 if part == 'resnets' else 1}", part, rest)


def _inner(prefix: str, part: str, rest: str) -> str:
    if part == "resnets":
        head, _, tail = rest.partition(".")
        return f"{prefix}.{_RESNET.get(head, head)}.{tail}"
    return f"{prefix}.{rest}"
