"""Z-Image test support: the tiny ZImagePipeline and the original (Tongyi / ComfyUI) naming.

The pipeline's transformer is the catalog's tiny-z-image; its text encoder is a 2-layer
Qwen3 (the family's encoder, hidden size = the transformer's `cap_feat_dim`) with a
word-level tokenizer made by the `tokenizers` library and a chat template that passes the
prompt through (the pipeline wraps every prompt in the tokenizer's chat template). The VAE
has 4 latent channels (the transformer's `in_channels`) and downsamples 8x.
"""

from __future__ import annotations

TINY_MODELS = ("tiny-z-image",)
APPLY_SIZE = (64, 64)
APPLY_FRAMES = 1
_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def build_tiny_pipeline(model_id: str = "tiny-z-image", seed: int = 0):
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    from runtime.catalog import get_model
    from runtime.families import get_family
    from tests.pipeline_fixtures import _word_level, tiny_vae

    assert model_id == "tiny-z-image"
    spec = get_model(model_id)
    config = spec.config
    torch.manual_seed(seed)
    transformer = get_family("z-image").build(config, device="cpu")
    vae = tiny_vae(config["in_channels"], scaling_factor=0.3611, shift_factor=0.1159)
    tok, vocab = _word_level(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|endoftext|>")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", unk_token="<|endoftext|>",
        pad_token="<|endoftext|>", model_max_length=spec.text_tokens,
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    text_encoder = Qwen3Model(Qwen3Config(
        hidden_size=config["cap_feat_dim"], intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=12, vocab_size=vocab,
        max_position_embeddings=64, pad_token_id=0,
    )).eval()
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae.eval(),
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
    )


_RENAMES = (
    ("all_final_layer.2-1.", "final_layer."),
    ("all_x_embedder.2-1.", "x_embedder."),
    (".attention.to_out.0.", ".attention.out."),
    (".attention.norm_q.", ".attention.q_norm."),
    (".attention.norm_k.", ".attention.k_norm."),
)


def to_original(state: dict, prefix: str = "model.diffusion_model.") -> dict:
    """`state` (diffusers names) in the original Z-Image names under ComfyUI's prefix: the
    exact inverse of diffusers' `convert_z_image_transformer_checkpoint_to_diffusers`."""
    import torch

    out = {}
    for name, tensor in state.items():
        if ".attention.to_k." in name or ".attention.to_v." in name:
            continue  # fused with to_q below
        if ".attention.to_q." in name:
            parts = [state[name.replace(".to_q.", f".{p}.")] for p in ("to_q", "to_k", "to_v")]
            out[name.replace(".to_q.", ".qkv.")] = torch.cat(parts, dim=0)
            continue
        for old, new in _RENAMES:
            name = name.replace(old, new)
        out[name] = tensor
    return {prefix + name: tensor.contiguous() for name, tensor in out.items()}
