"""SD3.5 test support: the tiny StableDiffusion3Pipeline and Stability AI's single-file naming.

The pipeline's transformer is the catalog's tiny-sd3 (two dual-attention blocks, a plain one
and the context-pre-only last one, as SD3.5 Medium has); its three text encoders are two
2-layer CLIPs with projection and a 2-layer T5, with word-level tokenizers made by the
`tokenizers` library (tests/pipeline_fixtures.py). CLIP's tokenizers are 8 tokens long and
T5 gets the rest of tiny-sd3's 16-token text sequence. The VAE has 4 latent channels (the
transformer's `in_channels`) and downsamples 8x, as SD3's does.
"""

from __future__ import annotations

TINY_MODELS = ("tiny-sd3",)
APPLY_SIZE = (64, 64)
APPLY_FRAMES = 1
CLIP_TOKENS = 8


def build_tiny_pipeline(model_id: str = "tiny-sd3", seed: int = 0):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from runtime.catalog import get_model
    from runtime.families import get_family
    from tests.pipeline_fixtures import tiny_tokenizers, tiny_vae

    assert model_id == "tiny-sd3"
    spec = get_model(model_id)
    config = spec.config
    torch.manual_seed(seed)
    transformer = get_family("sd3").build(config, device="cpu")
    vae = tiny_vae(config["in_channels"], scaling_factor=1.5305, shift_factor=0.0609)
    clip_tok, clip_vocab, t5_tok, t5_vocab = tiny_tokenizers()
    clip_tok.model_max_length = CLIP_TOKENS
    clip_tok_2, _, _, _ = tiny_tokenizers()
    clip_tok_2.model_max_length = CLIP_TOKENS
    t5_tok.model_max_length = spec.text_tokens - CLIP_TOKENS
    # the pooled projection is both CLIPs' projections side by side; their hidden states,
    # side by side and zero-padded, share T5's width (joint_attention_dim)
    projection = config["pooled_projection_dim"] // 2

    def clip():
        return CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=12, intermediate_size=37, projection_dim=projection,
            num_attention_heads=2, num_hidden_layers=2, vocab_size=clip_vocab,
            max_position_embeddings=CLIP_TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )).eval()

    text_encoder, text_encoder_2 = clip(), clip()
    text_encoder_3 = T5EncoderModel(T5Config(
        d_model=config["joint_attention_dim"], d_ff=37, d_kv=8, num_heads=4, num_layers=2,
        vocab_size=t5_vocab, pad_token_id=0, eos_token_id=1,
    )).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae.eval(), text_encoder=text_encoder, tokenizer=clip_tok,
        text_encoder_2=text_encoder_2, tokenizer_2=clip_tok_2,
        text_encoder_3=text_encoder_3, tokenizer_3=t5_tok,
    )


_TOP = {
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
}
_BLOCK = {
    "attn.to_out.0": "x_block.attn.proj",
    "attn.to_add_out": "context_block.attn.proj",
    "attn2.to_out.0": "x_block.attn2.proj",
    "norm1.linear": "x_block.adaLN_modulation.1",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}
_NORMS = {
    "attn.norm_q": "x_block.attn.ln_q",
    "attn.norm_k": "x_block.attn.ln_k",
    "attn.norm_added_q": "context_block.attn.ln_q",
    "attn.norm_added_k": "context_block.attn.ln_k",
    "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
}
_FUSED = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}


def to_original(state: dict, prefix: str = "model.diffusion_model.") -> dict:
    """`state` (diffusers names) in Stability AI's SD3 names under ComfyUI's prefix: the exact
    inverse of diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`. Every tensor is
    used (the caller's test checks the round trip tensor by tensor)."""
    import torch

    source = dict(state)
    out = {}

    def take(name: str):
        return source.pop(name) if name in source else None

    def swap(tensor):  # diffusers keeps (scale, shift); the original (shift, scale)
        scale, shift = tensor.chunk(2, dim=0)
        return torch.cat([shift, scale], dim=0)

    out["pos_embed"] = source.pop("pos_embed.pos_embed")
    for old, new in _TOP.items():
        for kind in ("weight", "bias"):
            out[f"{new}.{kind}"] = source.pop(f"{old}.{kind}")
    for kind in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{kind}"] = swap(source.pop(f"norm_out.linear.{kind}"))
    indices = sorted({int(n.split(".")[1]) for n in state if n.startswith("transformer_blocks.")})
    for i in indices:
        old, new = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        for a, b in _BLOCK.items():
            for kind in ("weight", "bias"):
                tensor = take(f"{old}{a}.{kind}")
                if tensor is not None:
                    out[f"{new}{b}.{kind}"] = tensor
        for a, b in _NORMS.items():
            tensor = take(f"{old}{a}.weight")
            if tensor is not None:
                out[f"{new}{b}.weight"] = tensor
        for b, parts in _FUSED.items():
            for kind in ("weight", "bias"):
                tensors = [take(f"{old}{p}.{kind}") for p in parts]
                if all(t is not None for t in tensors):
                    out[f"{new}{b}.{kind}"] = torch.cat(tensors, dim=0)
        last = i == indices[-1]
        for kind in ("weight", "bias"):
            tensor = source.pop(f"{old}norm1_context.linear.{kind}")
            out[f"{new}context_block.adaLN_modulation.1.{kind}"] = swap(tensor) if last else tensor
    assert not source, f"tensors left unmapped: {sorted(source)[:5]}"
    return {prefix + name: tensor.contiguous() for name, tensor in out.items()}
