"""FLUX.2 test support: a tiny Flux2Pipeline and the BFL single-file naming ComfyUI loads.

The pipeline's text encoder is a real Mistral3ForConditionalGeneration from a small config:
a 30-layer, 16-wide Mistral (the pipeline stacks the hidden states of layers 10, 20 and 30, so
`joint_attention_dim` is 3 x 16 = 48, as FLUX.2 [dev]'s 15360 is 3 x 5120), a 1-layer Pixtral
vision tower it never runs, and a word-level tokenizer with a chat template. The VAE is an
AutoencoderKLFlux2 with 8x downsampling and 4 latent channels (tiny-flux2's `in_channels` 16
= 4 x 2x2 patches).
"""

from __future__ import annotations

import re

import torch

TINY_MODELS = ("tiny-flux2",)
APPLY_SIZE = (64, 64)
APPLY_FRAMES = 1

_CHAT_TEMPLATE = (
    "{% for message in messages %}{% for part in message['content'] %}"
    "{{ part['text'] }} {% endfor %}{% endfor %}"
)


def _tokenizer():
    from transformers import PreTrainedTokenizerFast

    from tests.pipeline_fixtures import _word_level

    tok, vocab = _word_level(["<unk>", "<img>", "<s>", "</s>", "<pad>"], "<unk>")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        pad_token="<pad>", model_max_length=512,
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer, vocab


def _text_encoder(hidden: int, vocab: int):
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    config = Mistral3Config(
        text_config={
            "model_type": "mistral", "vocab_size": vocab, "hidden_size": hidden,
            "intermediate_size": 24, "max_position_embeddings": 512, "num_attention_heads": 2,
            "num_hidden_layers": 30, "num_key_value_heads": 1, "head_dim": 8,
            "rms_norm_eps": 1e-5, "sliding_window": None,
            "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 4,
        },
        vision_config={
            "model_type": "pixtral", "hidden_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 24, "image_size": 32,
            "patch_size": 8, "num_channels": 3, "head_dim": 8,
        },
        image_token_index=1, bos_token_id=2, eos_token_id=3, pad_token_id=4,
        vision_feature_layer=-1, spatial_merge_size=1,
    )
    return Mistral3ForConditionalGeneration(config).eval()


def build_tiny_pipeline(model_id: str = "tiny-flux2", seed: int = 0):
    """A Flux2Pipeline whose transformer is exactly the catalog's tiny-flux2 (fp32, CPU)."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline

    from runtime.catalog import get_model
    from runtime.families import get_family

    assert model_id == "tiny-flux2"
    spec = get_model(model_id)
    torch.manual_seed(seed)
    transformer = get_family("flux2").build(spec.config, device="cpu")
    tokenizer, vocab = _tokenizer()
    text_encoder = _text_encoder(spec.config["joint_attention_dim"] // 3, vocab)
    vae = AutoencoderKLFlux2(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        latent_channels=spec.config["in_channels"] // 4, norm_num_groups=4, sample_size=64,
        use_quant_conv=False, use_post_quant_conv=False,
    )
    return Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(), text_encoder=text_encoder,
        tokenizer=tokenizer, transformer=transformer,
    )


# ---------------------------------------------------------------- the BFL naming

_TOP = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_guidance_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_guidance_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
    "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
    "single_stream_modulation.linear": "single_stream_modulation.lin",
    "proj_out": "final_layer.linear",
}
_DOUBLE = {
    "attn.to_out.0": "img_attn.proj",
    "ff.linear_in": "img_mlp.0",
    "ff.linear_out": "img_mlp.2",
    "attn.to_add_out": "txt_attn.proj",
    "ff_context.linear_in": "txt_mlp.0",
    "ff_context.linear_out": "txt_mlp.2",
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
_SINGLE = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2"}
_SINGLE_NORMS = {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}


def block_indices(state: dict, block_list: str) -> list[int]:
    pattern = re.compile(rf"^{block_list}\.(\d+)\.")
    return sorted({int(m.group(1)) for name in state if (m := pattern.match(name))})


def to_original(state: dict, prefix: str = "") -> dict:
    """`state` (diffusers names) in BFL's FLUX.2 names, each under `prefix`: the exact inverse
    of diffusers' `convert_flux2_transformer_checkpoint_to_diffusers` (FLUX.2 has no biases;
    q, k, v fused per stream; the final adaLN's halves back in (shift, scale) order)."""
    source = dict(state)
    out = {}
    for old, new in _TOP.items():
        if f"{old}.weight" in source:
            out[f"{new}.weight"] = source.pop(f"{old}.weight")
    scale, shift = source.pop("norm_out.linear.weight").chunk(2, dim=0)
    out["final_layer.adaLN_modulation.1.weight"] = torch.cat([shift, scale], dim=0)
    for i in block_indices(state, "transformer_blocks"):
        old, new = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for a, b in _DOUBLE.items():
            out[f"{new}{b}.weight"] = source.pop(f"{old}{a}.weight")
        for a, b in _DOUBLE_NORMS.items():
            out[f"{new}{b}.scale"] = source.pop(f"{old}{a}.weight")
        for b, parts in _DOUBLE_FUSED.items():
            out[f"{new}{b}.weight"] = torch.cat([source.pop(f"{old}{p}.weight") for p in parts])
    for i in block_indices(state, "single_transformer_blocks"):
        old, new = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for a, b in _SINGLE.items():
            out[f"{new}{b}.weight"] = source.pop(f"{old}{a}.weight")
        for a, b in _SINGLE_NORMS.items():
            out[f"{new}{b}.scale"] = source.pop(f"{old}{a}.weight")
    assert not source, sorted(source)
    return {prefix + name: tensor.contiguous() for name, tensor in out.items()}
