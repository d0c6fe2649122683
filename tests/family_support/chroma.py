"""Chroma test support: a tiny ChromaPipeline and the original single-file naming ComfyUI loads.

The pipeline is FLUX's tiny parts without CLIP: a 2-layer T5 encoder with the word-level
tokenizer of `tests.pipeline_fixtures`, an 8x AutoencoderKL with 4 latent channels
(tiny-chroma's `in_channels` 16 = 4 x 2x2 patches), and tiny-chroma's transformer.
"""

from __future__ import annotations

import re

import torch

TINY_MODELS = ("tiny-chroma",)
APPLY_SIZE = (64, 64)
APPLY_FRAMES = 1


def build_tiny_pipeline(model_id: str = "tiny-chroma", seed: int = 0):
    """A ChromaPipeline whose transformer is exactly the catalog's tiny-chroma (fp32, CPU)."""
    from diffusers import ChromaPipeline, FlowMatchEulerDiscreteScheduler
    from transformers import T5Config, T5EncoderModel

    from runtime.catalog import get_model
    from runtime.families import get_family
    from tests.pipeline_fixtures import tiny_tokenizers, tiny_vae

    assert model_id == "tiny-chroma"
    spec = get_model(model_id)
    torch.manual_seed(seed)
    transformer = get_family("chroma").build(spec.config, device="cpu")
    vae = tiny_vae(spec.config["in_channels"] // 4, scaling_factor=1.5035, shift_factor=0.0609)
    _, _, t5_tok, t5_vocab = tiny_tokenizers()
    text_encoder = T5EncoderModel(T5Config(
        d_model=spec.config["joint_attention_dim"], d_ff=37, d_kv=8, num_heads=4,
        num_layers=2, vocab_size=t5_vocab, pad_token_id=0, eos_token_id=1,
    ))
    return ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(),
        text_encoder=text_encoder.eval(), tokenizer=t5_tok, transformer=transformer,
    )


# ---------------------------------------------------------------- the original naming


def block_indices(state: dict, block_list: str) -> list[int]:
    pattern = re.compile(rf"^{block_list}\.(\d+)\.")
    return sorted({int(m.group(1)) for name in state if (m := pattern.match(name))})


_TOP = {"context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear",
        "distilled_guidance_layer.in_proj": "distilled_guidance_layer.in_proj",
        "distilled_guidance_layer.out_proj": "distilled_guidance_layer.out_proj"}
_DOUBLE = {
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
}
_DOUBLE_NORMS = {
    "attn.norm_q": "img_attn.norm.query_norm",
    "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm",
    "attn.norm_added_k": "txt_attn.norm.key_norm",
}
_DOUBLE_FUSED = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}
_SINGLE_FUSED = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


def to_original(state: dict, prefix: str = "") -> dict:
    """`state` (diffusers names) in Chroma's original names, each under `prefix`: the exact
    inverse of diffusers' `convert_chroma_transformer_checkpoint_to_diffusers` (q, k, v fused
    per stream; a single block's q, k, v and mlp fused into `linear1`; RMS norms as `scale`)."""
    source = dict(state)
    out = {}

    def move(old: str, new: str) -> None:
        for kind in ("weight", "bias"):
            out[f"{new}.{kind}"] = source.pop(f"{old}.{kind}")

    def fuse(old: str, parts, new: str) -> None:
        for kind in ("weight", "bias"):
            out[f"{new}.{kind}"] = torch.cat([source.pop(f"{old}{p}.{kind}") for p in parts])

    for old, new in _TOP.items():
        move(old, new)
    approximator = "distilled_guidance_layer."
    for i in block_indices(state, approximator + "layers"):
        move(f"{approximator}layers.{i}.linear_1", f"{approximator}layers.{i}.in_layer")
        move(f"{approximator}layers.{i}.linear_2", f"{approximator}layers.{i}.out_layer")
        out[f"{approximator}norms.{i}.scale"] = source.pop(f"{approximator}norms.{i}.weight")
    for i in block_indices(state, "transformer_blocks"):
        old, new = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for a, b in _DOUBLE.items():
            move(old + a, new + b)
        for a, b in _DOUBLE_NORMS.items():
            out[f"{new}{b}.scale"] = source.pop(f"{old}{a}.weight")
        for b, parts in _DOUBLE_FUSED.items():
            fuse(old, parts, new + b)
    for i in block_indices(state, "single_transformer_blocks"):
        old, new = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        fuse(old, _SINGLE_FUSED, new + "linear1")
        move(old + "proj_out", new + "linear2")
        for a, b in _SINGLE_NORMS.items():
            out[f"{new}{b}.scale"] = source.pop(f"{old}{a}.weight")
    assert not source, sorted(source)
    return {prefix + name: tensor.contiguous() for name, tensor in out.items()}
