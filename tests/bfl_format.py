"""Write a FLUX transformer's diffusers-named tensors as an original (BFL) single file.

The exact inverse of diffusers' `convert_flux_transformer_checkpoint_to_diffusers`: q, k, v
fused into `img_attn.qkv` / `txt_attn.qkv`, a single block's q, k, v and mlp into `linear1`,
and `final_layer.adaLN_modulation.1` with its halves back in BFL's (shift, scale) order.
"""

from __future__ import annotations

import re

_TOP = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
}
_DOUBLE = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
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
_SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
_SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}
_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}


def _indices(state: dict, block_list: str) -> list[int]:
    pattern = re.compile(rf"^{block_list}\.(\d+)\.")
    return sorted({int(m.group(1)) for name in state if (m := pattern.match(name))})


def _swap_halves(tensor):
    import torch

    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_bfl(state: dict, prefix: str = "") -> dict:
    """`state` (diffusers names) in BFL names, each under `prefix`; every tensor is used."""
    import torch

    source = dict(state)
    out = {}

    def move(old: str, new: str, kinds=("weight", "bias")) -> None:
        for kind in kinds:
            out[f"{new}.{kind}"] = source.pop(f"{old}.{kind}")

    def fuse(old_prefix: str, parts: tuple[str, ...], new: str) -> None:
        for kind in ("weight", "bias"):
            out[f"{new}.{kind}"] = torch.cat(
                [source.pop(f"{old_prefix}{part}.{kind}") for part in parts], dim=0
            )

    for old, new in _TOP.items():
        move(old, new)
    for kind in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(
            source.pop(f"norm_out.linear.{kind}")
        )
    for i in _indices(state, "transformer_blocks"):
        old, new = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for a, b in _DOUBLE.items():
            move(old + a, new + b)
        for a, b in _DOUBLE_NORMS.items():
            out[f"{new}{b}.scale"] = source.pop(f"{old}{a}.weight")
        for b, parts in _DOUBLE_FUSED.items():
            fuse(old, parts, new + b)
    for i in _indices(state, "single_transformer_blocks"):
        old, new = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for a, b in _SINGLE.items():
            move(old + a, new + b)
        for a, b in _SINGLE_NORMS.items():
            out[f"{new}{b}.scale"] = source.pop(f"{old}{a}.weight")
        for b, parts in _SINGLE_FUSED.items():
            fuse(old, parts, new + b)
    assert not source, f"diffusers names with no BFL name: {sorted(source)[:3]}"
    return {prefix + name: tensor.contiguous() for name, tensor in out.items()}


def save_bfl(state: dict, path, prefix: str = ""):
    """Write `state` (diffusers names) to `path` as a BFL-named safetensors file."""
    from safetensors.torch import save_file

    save_file(to_bfl(state, prefix), str(path))
    return path
