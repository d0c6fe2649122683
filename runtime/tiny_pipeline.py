"""A tiny, real FluxPipeline built locally from configs: nothing is downloaded.

`planner models tiny-pipeline DIR` saves it, so that a newcomer can dry-run `planner apply` on
a CPU in seconds; the tests use the same pipeline (and its VAE and tokenizers).

The transformer is the catalog's tiny-flux (so plans built for `tiny-flux` fit it); the VAE
has 4 latent channels (tiny-flux's `in_channels` 16 = 4 latent channels x 2x2 patches) and an
8x downsampling, as FLUX's has; the two text encoders are 2-layer CLIP and T5 with tokenizers
made from a small word-level vocabulary by the `tokenizers` library.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ["a", "cat", "dog", "on", "the", "mat", "photo", "of", "red", "blue"]


def _word_level(special: list[str], unk: str):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(special + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok, len(vocab)


def tiny_tokenizers():
    from transformers import PreTrainedTokenizerFast

    clip_tok, clip_vocab = _word_level(["<|startoftext|>", "<|endoftext|>"], "<|endoftext|>")
    clip = PreTrainedTokenizerFast(
        tokenizer_object=clip_tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=77,
    )
    t5_tok, t5_vocab = _word_level(["<pad>", "</s>", "<unk>"], "<unk>")
    t5 = PreTrainedTokenizerFast(
        tokenizer_object=t5_tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=512,
    )
    return clip, clip_vocab, t5, t5_vocab


def tiny_vae(latent_channels: int, scaling_factor: float, shift_factor: float | None = None,
             quant_conv: bool = False):
    """The tiny image VAE the test pipelines share: 4 levels of 8 channels, 8x spatial,
    `latent_channels` latents with the family's scaling (and shift) factor; SD-style VAEs keep
    their quant convs (`quant_conv`), FLUX-style ones have none."""
    from diffusers import AutoencoderKL

    extra = {} if quant_conv else {"use_quant_conv": False, "use_post_quant_conv": False}
    if shift_factor is not None:
        extra["shift_factor"] = shift_factor
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=latent_channels,
        norm_num_groups=4, sample_size=64, scaling_factor=scaling_factor, **extra,
    )


def build_tiny_pipeline(seed: int = 0):
    """A FluxPipeline whose transformer is exactly the catalog's tiny-flux (fp32, CPU)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from runtime.catalog import get_model
    from runtime.families import get_family

    spec = get_model("tiny-flux")
    torch.manual_seed(seed)
    transformer = get_family("flux").build(spec.config, device="cpu")
    latent_channels = spec.config["in_channels"] // 4
    vae = tiny_vae(latent_channels, scaling_factor=1.5035, shift_factor=0.0609)
    clip_tok, clip_vocab, t5_tok, t5_vocab = tiny_tokenizers()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=spec.config["pooled_projection_dim"], intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=clip_vocab,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    text_encoder_2 = T5EncoderModel(T5Config(
        d_model=spec.config["joint_attention_dim"], d_ff=37, d_kv=8, num_heads=4,
        num_layers=2, vocab_size=t5_vocab, pad_token_id=0, eos_token_id=1,
    ))
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(),
        text_encoder=text_encoder.eval(), tokenizer=clip_tok,
        text_encoder_2=text_encoder_2.eval(), tokenizer_2=t5_tok, transformer=transformer,
    )


def save_tiny_pipeline(path: Path, seed: int = 0) -> Path:
    """Save the pipeline as a diffusers folder (safetensors) at `path`."""
    build_tiny_pipeline(seed).save_pretrained(path, safe_serialization=True)
    return path
