"""Wan test support: the tiny WanPipeline (umT5 text encoder, 3D VAE) and the original Wan
single-file naming ComfyUI loads."""

from __future__ import annotations

import re

TINY_MODELS = ("tiny-wan",)
APPLY_SIZE = (64, 64)
APPLY_FRAMES = 5  # 4k+1: two latent frames

# diffusers name -> original Wan name, the inverse of diffusers'
# convert_wan_transformer_to_diffusers (applied to whole dotted components, in order).
_TOP = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "proj_out": "head.head",
    "scale_shift_table": "head.modulation",
}
_BLOCK = {
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_out.0": "cross_attn.o",
    "attn1": "self_attn",
    "attn2": "cross_attn",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
    "norm2": "norm3",
    "scale_shift_table": "modulation",
}
_PROJ = re.compile(r"\.to_([qkv])\.")
_BLOCK_NAME = re.compile(r"^(blocks\.\d+)\.(.*)$")


def build_tiny_pipeline(model_id: str = "tiny-wan", seed: int = 0):
    """A WanPipeline whose transformer is exactly the catalog's tiny-wan (fp32, CPU): a
    2-layer umT5 encoder, a Wan VAE with 16 latent channels, 4x in time and 8x in space."""
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    from runtime.catalog import get_model
    from runtime.families import get_family
    from tests.pipeline_fixtures import tiny_tokenizers

    assert model_id == "tiny-wan"
    spec = get_model(model_id)
    torch.manual_seed(seed)
    transformer = get_family("wan").build(spec.config, device="cpu")
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=spec.config["in_channels"], dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    _, _, tokenizer, vocab = tiny_tokenizers()
    text_encoder = UMT5EncoderModel(UMT5Config(
        d_model=spec.config["text_dim"], d_ff=37, d_kv=8, num_heads=4, num_layers=2,
        vocab_size=vocab, pad_token_id=0, eos_token_id=1,
    ))
    return WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer,
    )


def to_original(state: dict, prefix: str = "") -> dict:
    """Diffusers-named Wan tensors under the original Wan names (`prefix` as ComfyUI adds)."""
    out = {}
    for name, tensor in state.items():
        out[prefix + _original_name(name)] = tensor
    return out


def _original_name(name: str) -> str:
    match = _BLOCK_NAME.match(name)
    if match is None:
        for new, old in _TOP.items():
            if name == new or name.startswith(new + "."):
                return old + name[len(new):]
        return name  # patch_embedding keeps its name
    block, rest = match.groups()
    for new, old in _BLOCK.items():
        if rest == new or rest.startswith(new + "."):
            rest = old + rest[len(new):]
            break
    rest = _PROJ.sub(r".\1.", "." + rest)[1:]
    return f"{block}.{rest}"
