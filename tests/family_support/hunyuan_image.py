"""HunyuanImage 2.1 test support: a tiny, real HunyuanImagePipeline built locally (nothing
downloaded), and Tencent's original single-file naming.

The transformer is the catalog's tiny-hunyuanimage; the text encoders a 2-layer
Qwen2_5_VLForConditionalGeneration (width `text_embed_dim`, the Qwen-Image support's tiny
tokenizer, whose chat template is the real 34 tokens) and a 2-layer T5EncoderModel for the
glyph text (width `text_embed_2_dim`) with the byte-level ByT5Tokenizer, which needs no
files; the VAE an AutoencoderKLHunyuanImage with 32x spatial compression, as the released
one; the guider the pipeline's AdaptiveProjectedMixGuidance (CFG, two forwards per step).

`to_original` writes the names diffusers' conversion script reads
(scripts/convert_hunyuan_image_to_diffusers.py): written out here on their own, not from the
adapter's tables, so a wrong table fails the round trip.
"""

from __future__ import annotations

TINY_MODELS = ("tiny-hunyuanimage",)
APPLY_SIZE = (64, 64)
APPLY_FRAMES = 1


def build_tiny_pipeline(model_id: str = "tiny-hunyuanimage", seed: int = 0):
    import torch
    from diffusers import (
        AdaptiveProjectedMixGuidance, AutoencoderKLHunyuanImage, FlowMatchEulerDiscreteScheduler,
        HunyuanImagePipeline,
    )
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    from runtime.catalog import get_model
    from runtime.families import get_family
    from tests.family_support.qwen_image import tiny_text_encoder

    assert model_id in TINY_MODELS
    spec = get_model(model_id)
    torch.manual_seed(seed)
    transformer = get_family("hunyuan-image").build(spec.config, device="cpu")
    vae = AutoencoderKLHunyuanImage(
        in_channels=3, out_channels=3, latent_channels=spec.config["in_channels"],
        block_out_channels=(32,) * 6, layers_per_block=1, spatial_compression_ratio=32,
        sample_size=64, scaling_factor=0.75289,
    )
    text_encoder, tokenizer = tiny_text_encoder(spec.config["text_embed_dim"])
    text_encoder_2 = T5EncoderModel(T5Config(
        d_model=spec.config["text_embed_2_dim"], d_kv=8, d_ff=37, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, vocab_size=384,
        feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_encoder_decoder=False,
        use_cache=False, tie_word_embeddings=False,
    ))
    return HunyuanImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), vae=vae.eval(),
        text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2.eval(), tokenizer_2=ByT5Tokenizer(),
        transformer=transformer, guider=AdaptiveProjectedMixGuidance(),
        ocr_guider=AdaptiveProjectedMixGuidance(),
    )


_REFINER = [  # (diffusers, original) inside context_embedder.token_refiner.refiner_blocks.N
    ("norm1", "norm1"), ("norm2", "norm2"), ("attn.to_out.0", "self_attn_proj"),
    ("ff.net.0.proj", "mlp.fc1"), ("ff.net.2", "mlp.fc2"), ("norm_out.linear", "adaLN_modulation.1"),
]
_DOUBLE = [
    ("norm1.linear", "img_mod.linear"), ("norm1_context.linear", "txt_mod.linear"),
    ("attn.to_q", "img_attn_q"), ("attn.to_k", "img_attn_k"), ("attn.to_v", "img_attn_v"),
    ("attn.norm_q", "img_attn_q_norm"), ("attn.norm_k", "img_attn_k_norm"),
    ("attn.to_out.0", "img_attn_proj"), ("ff.net.0.proj", "img_mlp.fc1"), ("ff.net.2", "img_mlp.fc2"),
    ("attn.add_q_proj", "txt_attn_q"), ("attn.add_k_proj", "txt_attn_k"),
    ("attn.add_v_proj", "txt_attn_v"), ("attn.norm_added_q", "txt_attn_q_norm"),
    ("attn.norm_added_k", "txt_attn_k_norm"), ("attn.to_add_out", "txt_attn_proj"),
    ("ff_context.net.0.proj", "txt_mlp.fc1"), ("ff_context.net.2", "txt_mlp.fc2"),
]
_SINGLE = [
    ("norm.linear", "modulation.linear"), ("attn.to_q", "linear1_q"), ("attn.to_k", "linear1_k"),
    ("attn.to_v", "linear1_v"), ("proj_mlp", "linear1_mlp"), ("attn.norm_q", "q_norm"),
    ("attn.norm_k", "k_norm"), ("proj_out", "linear2.fc"),
]
_REST = [
    ("x_embedder.proj", "img_in.proj"), ("context_embedder_2.norm", "byt5_in.layernorm"),
    ("context_embedder_2.linear_1", "byt5_in.fc1"), ("context_embedder_2.linear_2", "byt5_in.fc2"),
    ("context_embedder_2.linear_3", "byt5_in.fc3"), ("context_embedder.proj_in", "txt_in.input_embedder"),
    ("context_embedder.time_text_embed.timestep_embedder.linear_1", "txt_in.t_embedder.mlp.0"),
    ("context_embedder.time_text_embed.timestep_embedder.linear_2", "txt_in.t_embedder.mlp.2"),
    ("context_embedder.time_text_embed.text_embedder.linear_1", "txt_in.c_embedder.linear_1"),
    ("context_embedder.time_text_embed.text_embedder.linear_2", "txt_in.c_embedder.linear_2"),
    ("time_guidance_embed.timestep_embedder.linear_1", "time_in.mlp.0"),
    ("time_guidance_embed.timestep_embedder.linear_2", "time_in.mlp.2"),
    ("proj_out", "final_layer.linear"),
]


def to_original(state: dict, prefix: str = "") -> dict:
    """Tencent's naming: q, k, v split as in the released file, the refiner's fused."""
    import torch

    state = dict(state)
    out = {}

    def move(new_prefix: str, old_prefix: str, pairs) -> None:
        for new, old in pairs:
            for kind in ("weight", "bias"):
                if f"{new_prefix}{new}.{kind}" in state:
                    out[f"{old_prefix}{old}.{kind}"] = state.pop(f"{new_prefix}{new}.{kind}")

    refiners = sorted({int(n.split(".")[3]) for n in state if n.startswith("context_embedder.token_refiner.")})
    for i in refiners:
        new, old = f"context_embedder.token_refiner.refiner_blocks.{i}.", f"txt_in.individual_token_refiner.blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{old}self_attn_qkv.{kind}"] = torch.cat(
                [state.pop(f"{new}attn.to_{x}.{kind}") for x in "qkv"], dim=0
            )
        move(new, old, _REFINER)
    for i in sorted({int(n.split(".")[1]) for n in state if n.startswith("transformer_blocks.")}):
        move(f"transformer_blocks.{i}.", f"double_blocks.{i}.", _DOUBLE)
    for i in sorted({int(n.split(".")[1]) for n in state if n.startswith("single_transformer_blocks.")}):
        move(f"single_transformer_blocks.{i}.", f"single_blocks.{i}.", _SINGLE)
    move("", "", _REST)
    for kind in ("weight", "bias"):
        scale, shift = state.pop(f"norm_out.linear.{kind}").chunk(2, dim=0)
        out[f"final_layer.adaLN_modulation.1.{kind}"] = torch.cat([shift, scale], dim=0)
    assert not state, sorted(state)[:5]  # every tensor has an original name
    return {prefix + k: v.contiguous() for k, v in out.items()}
