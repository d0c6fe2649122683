"""LTX-Video test support: the tiny LTXPipeline (T5 text encoder, LTX's 3D VAE at its real 32x
spatial and 8x temporal compression) and the original Lightricks single-file naming ComfyUI
loads."""

from __future__ import annotations

TINY_MODELS = ("tiny-ltx-video",)
APPLY_SIZE = (64, 64)
APPLY_FRAMES = 9  # 8k+1: two latent frames

COMFYUI_PREFIX = "model.diffusion_model."

# diffusers name part -> original name part: the inverse of diffusers'
# convert_ltx_transformer_checkpoint_to_diffusers (a renaming by substrings).
_RENAMES = {
    "proj_in": "patchify_proj",
    "time_embed": "adaln_single",
    "norm_q": "q_norm",
    "norm_k": "k_norm",
}


def build_tiny_pipeline(model_id: str = "tiny-ltx-video", seed: int = 0):
    """An LTXPipeline whose transformer is exactly the catalog's tiny-ltx-video (fp32, CPU):
    a 2-layer T5 encoder and an LTX VAE with the released patching and downsampling (32x in
    space, 8x in time) at 8 channels."""
    import torch
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline
    from transformers import T5Config, T5EncoderModel

    from runtime.catalog import get_model
    from runtime.families import get_family
    from tests.pipeline_fixtures import tiny_tokenizers

    assert model_id == "tiny-ltx-video"
    spec = get_model(model_id)
    torch.manual_seed(seed)
    transformer = get_family("ltx-video").build(spec.config, device="cpu")
    vae = AutoencoderKLLTXVideo(
        latent_channels=spec.config["in_channels"], block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False), patch_size=4, patch_size_t=1,
    )
    _, _, tokenizer, vocab = tiny_tokenizers()
    text_encoder = T5EncoderModel(T5Config(
        d_model=spec.config["caption_channels"], d_ff=37, d_kv=8, num_heads=4, num_layers=2,
        vocab_size=vocab, pad_token_id=0, eos_token_id=1,
    ))
    # the scheduler diffusers' LTX conversion script saves with the released pipelines
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
        max_image_seq_len=4096, shift_terminal=0.1,
    )
    return LTXPipeline(
        scheduler=scheduler, vae=vae.eval(), text_encoder=text_encoder.eval(),
        tokenizer=tokenizer, transformer=transformer,
    )


def to_original(state: dict, prefix: str = COMFYUI_PREFIX) -> dict:
    """Diffusers-named LTX tensors under the original Lightricks names, with the prefix the
    released single files (and ComfyUI) use."""
    out = {}
    for name, tensor in state.items():
        for new, old in _RENAMES.items():
            name = name.replace(new, old)
        out[prefix + name] = tensor
    return out
