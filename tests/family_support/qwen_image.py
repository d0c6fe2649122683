"""Qwen-Image test support: a tiny, real QwenImagePipeline built locally (nothing downloaded).

The transformer is the catalog's tiny-qwen-image; the text encoder a 2-layer
Qwen2_5_VLForConditionalGeneration whose hidden size is the transformer's
`joint_attention_dim`, with a word-level tokenizer made by the `tokenizers` library that
knows Qwen's chat-template tokens; the VAE an AutoencoderKLQwenImage with 4 latent channels
(tiny-qwen-image's `in_channels` 16 = 4 x 2x2 patches) and 8x spatial downsampling, as the
released one has (three downsampling levels).

ComfyUI loads Qwen-Image files in diffusers naming (see runtime/families/qwen_image.py), so
there is no original naming to write: `to_original` returns None, and
tests/test_qwen_image.py covers the ComfyUI-prefixed file.
"""

from __future__ import annotations

TINY_MODELS = ("tiny-qwen-image",)
APPLY_SIZE = (64, 64)
APPLY_FRAMES = 1

_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_NEWLINE = "\n"  # a token of its own, as in Qwen's vocabulary: the template's 34 tokens stay 34
_WORDS = [
    "a", "cat", "dog", "on", "the", "mat", "photo", "of", "red", "blue", "system", "user",
    "assistant", "Describe", "image", "by", "detailing", "color", "shape", "size", "texture",
    "quantity", "text", "spatial", "relationships", "objects", "and", "background", ",", ":",
]


def tiny_tokenizer():
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_SPECIAL + [_NEWLINE] + _WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, special=True) for t in _SPECIAL])
    tok.add_tokens([AddedToken(_NEWLINE, normalized=False)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", unk_token="<|endoftext|>",
        pad_token="<|endoftext|>", model_max_length=2048,
    )
    return fast, len(vocab)


def tiny_text_encoder(hidden: int):
    """A 2-layer Qwen2_5_VLForConditionalGeneration of width `hidden` and its tokenizer."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer, vocab = tiny_tokenizer()
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": hidden, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": vocab,
            "rope_scaling": {"mrope_section": [2, 2, 4], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 0,
        },
        vision_config={
            "depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
            "out_hidden_size": hidden,
        },
        vocab_size=vocab, image_token_id=vocab + 1, video_token_id=vocab + 2,
        vision_start_token_id=vocab + 3, vision_end_token_id=vocab + 4,
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval(), tokenizer


def build_tiny_pipeline(model_id: str = "tiny-qwen-image", seed: int = 0):
    """A QwenImagePipeline whose transformer is exactly the catalog's `model_id` (fp32, CPU)."""
    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    from runtime.catalog import get_model
    from runtime.families import get_family

    assert model_id in TINY_MODELS
    spec = get_model(model_id)
    torch.manual_seed(seed)
    transformer = get_family("qwen-image").build(spec.config, device="cpu")
    z_dim = spec.config["in_channels"] // 4
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=z_dim, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0][:z_dim], latents_std=[1.5, 0.8, 1.2, 1.0][:z_dim],
    )
    text_encoder, tokenizer = tiny_text_encoder(spec.config["joint_attention_dim"])
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(),
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
    )


def to_original(state: dict) -> dict | None:
    return None
