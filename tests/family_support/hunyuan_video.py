"""HunyuanVideo test support: the tiny HunyuanVideoPipeline (Llama and CLIP text encoders,
HunyuanVideo's causal 3D VAE at its real 8x spatial and 4x temporal compression) and the
original Tencent single-file naming ComfyUI loads."""

from __future__ import annotations

import re

TINY_MODELS = ("tiny-hunyuanvideo",)
APPLY_SIZE = (64, 64)
APPLY_FRAMES = 5  # 4k+1: two latent frames

# diffusers name -> original name, the inverse of diffusers'
# convert_hunyuan_video_transformer_to_diffusers. Fused q/k/v (and the single blocks' q/k/v/mlp)
# are handled in `_fuse`; the final modulation's halves are swapped in `to_original`.
_TOP = {
    "x_embedder.proj": "img_in.proj",
    "time_text_embed.timestep_embedder.linear_1": "time_in.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "time_in.mlp.2",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.mlp.0",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.mlp.2",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "context_embedder.time_text_embed.timestep_embedder.linear_1": "txt_in.t_embedder.mlp.0",
    "context_embedder.time_text_embed.timestep_embedder.linear_2": "txt_in.t_embedder.mlp.2",
    "context_embedder.time_text_embed.text_embedder.linear_1": "txt_in.c_embedder.linear_1",
    "context_embedder.time_text_embed.text_embedder.linear_2": "txt_in.c_embedder.linear_2",
    "context_embedder.proj_in": "txt_in.input_embedder",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
    "proj_out": "final_layer.linear",
}
_REFINER = {
    "attn.to_out.0": "self_attn_proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
    "norm_out.linear": "adaLN_modulation.1",
}
_DOUBLE = {
    "norm1.linear": "img_mod.linear",
    "norm1_context.linear": "txt_mod.linear",
    "attn.norm_q": "img_attn_q_norm",
    "attn.norm_k": "img_attn_k_norm",
    "attn.norm_added_q": "txt_attn_q_norm",
    "attn.norm_added_k": "txt_attn_k_norm",
    "attn.to_out.0": "img_attn_proj",
    "attn.to_add_out": "txt_attn_proj",
    "ff.net.0.proj": "img_mlp.fc1",
    "ff.net.2": "img_mlp.fc2",
    "ff_context.net.0.proj": "txt_mlp.fc1",
    "ff_context.net.2": "txt_mlp.fc2",
}
_SINGLE = {
    "attn.norm_q": "q_norm",
    "attn.norm_k": "k_norm",
    "norm.linear": "modulation.linear",
    "proj_out": "linear2",
}
# (diffusers block list, original block list, parts fused in order, the fused tensor's name)
_FUSED = (
    ("context_embedder.token_refiner.refiner_blocks", "txt_in.individual_token_refiner.blocks",
     ("attn.to_q", "attn.to_k", "attn.to_v"), "self_attn_qkv"),
    ("transformer_blocks", "double_blocks", ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn_qkv"),
    ("transformer_blocks", "double_blocks",
     ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"), "txt_attn_qkv"),
    ("single_transformer_blocks", "single_blocks",
     ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), "linear1"),
)
_LISTS = {
    "context_embedder.token_refiner.refiner_blocks": ("txt_in.individual_token_refiner.blocks", _REFINER),
    "transformer_blocks": ("double_blocks", _DOUBLE),
    "single_transformer_blocks": ("single_blocks", _SINGLE),
}
_BLOCK_NAME = re.compile(
    r"^(" + "|".join(re.escape(k) for k in _LISTS) + r")\.(\d+)\.(.*)$"
)


def build_tiny_pipeline(model_id: str = "tiny-hunyuanvideo", seed: int = 0):
    """A HunyuanVideoPipeline whose transformer is exactly the catalog's tiny-hunyuanvideo
    (fp32, CPU): 2-layer Llama and CLIP text encoders, a HunyuanVideo VAE with 4 latent
    channels, 4x in time and 8x in space."""
    import torch
    from diffusers import (
        AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    from runtime.catalog import get_model
    from runtime.families import get_family
    from tests.pipeline_fixtures import tiny_tokenizers

    assert model_id == "tiny-hunyuanvideo"
    spec = get_model(model_id)
    torch.manual_seed(seed)
    transformer = get_family("hunyuan-video").build(spec.config, device="cpu")
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=spec.config["in_channels"], block_out_channels=(8, 8, 8, 8),
        layers_per_block=1, norm_num_groups=4, scaling_factor=0.476986,
        spatial_compression_ratio=8, temporal_compression_ratio=4,
    )
    clip_tok, clip_vocab, llama_tok, llama_vocab = tiny_tokenizers()
    text_encoder = LlamaModel(LlamaConfig(
        hidden_size=spec.config["text_embed_dim"], intermediate_size=37, num_attention_heads=4,
        num_key_value_heads=4, num_hidden_layers=2, vocab_size=llama_vocab, pad_token_id=0,
        bos_token_id=1, eos_token_id=1,
    ))
    text_encoder_2 = CLIPTextModel(CLIPTextConfig(
        hidden_size=spec.config["pooled_projection_dim"], intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=clip_vocab,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    return HunyuanVideoPipeline(
        text_encoder=text_encoder.eval(), tokenizer=llama_tok, transformer=transformer,
        vae=vae.eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=text_encoder_2.eval(), tokenizer_2=clip_tok,
    )


def to_original(state: dict, prefix: str = "") -> dict:
    """Diffusers-named HunyuanVideo tensors under the original Tencent names (`prefix` as
    ComfyUI adds), q/k/v fused as the original stores them."""
    import torch

    state = dict(state)
    out = _fuse(state)
    for name, tensor in state.items():
        original = _original_name(name)
        if original.startswith("final_layer.adaLN_modulation.1."):
            scale, shift = tensor.chunk(2, dim=0)  # diffusers keeps (scale, shift)
            tensor = torch.cat([shift, scale], dim=0)
        out[original] = tensor
    return {prefix + name: tensor for name, tensor in out.items()}


def _fuse(state: dict) -> dict:
    """Pops the parts of every fused tensor out of `state`; returns the fused tensors."""
    import torch

    fused = {}
    indices = {m.group(2) for m in map(_BLOCK_NAME.match, state) if m}
    for new_list, old_list, parts, old in _FUSED:
        for index in sorted(indices):
            for kind in ("weight", "bias"):
                names = [f"{new_list}.{index}.{part}.{kind}" for part in parts]
                if all(name in state for name in names):
                    fused[f"{old_list}.{index}.{old}.{kind}"] = torch.cat(
                        [state.pop(name) for name in names], dim=0
                    )
    return fused


def _original_name(name: str) -> str:
    match = _BLOCK_NAME.match(name)
    if match is None:
        for new, old in _TOP.items():
            if name.startswith(new + "."):
                return old + name[len(new):]
        raise KeyError(name)
    new_list, index, rest = match.groups()
    old_list, parts = _LISTS[new_list]
    for new, old in parts.items():
        if rest.startswith(new + "."):
            rest = old + rest[len(new):]
            break
    return f"{old_list}.{index}.{rest}"
