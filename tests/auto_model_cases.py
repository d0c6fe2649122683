"""Tiny configs and forward inputs of model classes that have no family adapter, for
`apply_auto` tests: diffusers transformers (image and video), UNets, and transformers text
encoders. Built in the test from configs (random weights, seeded); nothing is downloaded.

`CASES[name] = Case(modality, build, inputs)`: `build()` returns the module in eval mode (fp32),
`inputs()` the keyword arguments of one forward (random, seeded). Shapes follow diffusers'
own model tests, made smaller where the forward allows it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch


@dataclasses.dataclass(frozen=True)
class Case:
    modality: str  # "image", "video", "unet", "text"
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[], dict]


def _r(*shape) -> torch.Tensor:
    return torch.randn(*shape)


def _diffusers(name: str, **config):
    def build():
        import diffusers

        return getattr(diffusers, name)(**config).eval()

    return build


CASES: dict[str, Case] = {
    "WanVACETransformer3DModel": Case(
        "video",
        _diffusers("WanVACETransformer3DModel", patch_size=(1, 2, 2), num_attention_heads=2,
                   attention_head_dim=12, in_channels=16, out_channels=16, text_dim=32, freq_dim=32,
                   ffn_dim=32, num_layers=8, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                   rope_max_seq_len=32, vace_layers=[0, 3, 5], vace_in_channels=48),
        lambda: dict(hidden_states=_r(1, 16, 2, 8, 8), timestep=torch.tensor([500]),
                     encoder_hidden_states=_r(1, 12, 32), control_hidden_states=_r(1, 48, 2, 8, 8),
                     return_dict=False),
    ),
    "SkyReelsV2Transformer3DModel": Case(
        "video",
        _diffusers("SkyReelsV2Transformer3DModel", patch_size=(1, 2, 2), num_attention_heads=2,
                   attention_head_dim=12, in_channels=16, out_channels=16, text_dim=32, freq_dim=32,
                   ffn_dim=32, num_layers=8, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                   rope_max_seq_len=32),
        lambda: dict(hidden_states=_r(1, 16, 2, 8, 8), timestep=torch.tensor([500]),
                     encoder_hidden_states=_r(1, 12, 32), return_dict=False),
    ),
    "CogVideoXTransformer3DModel": Case(
        "video",
        _diffusers("CogVideoXTransformer3DModel", num_attention_heads=2, attention_head_dim=8,
                   in_channels=4, out_channels=4, time_embed_dim=4, text_embed_dim=8, num_layers=8,
                   sample_width=8, sample_height=8, sample_frames=8, patch_size=2,
                   temporal_compression_ratio=4, max_text_seq_length=8),
        lambda: dict(hidden_states=_r(1, 2, 4, 8, 8), encoder_hidden_states=_r(1, 8, 8),
                     timestep=torch.tensor([500]), return_dict=False),
    ),
    "MochiTransformer3DModel": Case(
        "video",
        _diffusers("MochiTransformer3DModel", patch_size=2, num_attention_heads=2, attention_head_dim=8,
                   num_layers=8, pooled_projection_dim=16, in_channels=4, out_channels=None,
                   qk_norm="rms_norm", text_embed_dim=16, time_embed_dim=4, activation_fn="swiglu",
                   max_sequence_length=16),
        lambda: dict(hidden_states=_r(1, 4, 2, 8, 8), encoder_hidden_states=_r(1, 16, 16),
                     timestep=torch.tensor([500]), encoder_attention_mask=torch.ones(1, 16).bool(),
                     return_dict=False),
    ),
    "AllegroTransformer3DModel": Case(
        "video",
        _diffusers("AllegroTransformer3DModel", num_attention_heads=2, attention_head_dim=8,
                   in_channels=4, out_channels=4, num_layers=8, cross_attention_dim=16,
                   sample_width=8, sample_height=8, sample_frames=8, caption_channels=8),
        lambda: dict(hidden_states=_r(1, 4, 2, 8, 8), encoder_hidden_states=_r(1, 8, 8),
                     timestep=torch.tensor([500]), return_dict=False),
    ),
    "Lumina2Transformer2DModel": Case(
        "image",
        _diffusers("Lumina2Transformer2DModel", sample_size=16, patch_size=2, in_channels=4,
                   hidden_size=24, num_layers=8, num_refiner_layers=1, num_attention_heads=3,
                   num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5,
                   scaling_factor=1.0, axes_dim_rope=(4, 2, 2), axes_lens=(128, 128, 128),
                   cap_feat_dim=8),
        lambda: dict(hidden_states=_r(1, 4, 16, 16), timestep=torch.rand(1),
                     encoder_hidden_states=_r(1, 8, 8), encoder_attention_mask=torch.ones(1, 8).bool(),
                     return_dict=False),
    ),
    "SanaTransformer2DModel": Case(
        "image",
        _diffusers("SanaTransformer2DModel", patch_size=1, in_channels=4, out_channels=4, num_layers=8,
                   attention_head_dim=4, num_attention_heads=2, num_cross_attention_heads=2,
                   cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
                   sample_size=32),
        lambda: dict(hidden_states=_r(1, 4, 8, 8), encoder_hidden_states=_r(1, 8, 8),
                     timestep=torch.tensor([500]), return_dict=False),
    ),
    "CogView4Transformer2DModel": Case(
        "image",
        _diffusers("CogView4Transformer2DModel", patch_size=2, in_channels=4, num_layers=8,
                   attention_head_dim=4, num_attention_heads=4, out_channels=4, text_embed_dim=8,
                   time_embed_dim=8, condition_dim=4),
        lambda: dict(hidden_states=_r(1, 4, 8, 8), encoder_hidden_states=_r(1, 8, 8),
                     timestep=torch.tensor([500]), original_size=torch.tensor([[64, 64]]),
                     target_size=torch.tensor([[64, 64]]), crop_coords=torch.tensor([[0, 0]]),
                     return_dict=False),
    ),
    "AuraFlowTransformer2DModel": Case(
        "image",
        _diffusers("AuraFlowTransformer2DModel", sample_size=16, patch_size=2, in_channels=4,
                   num_mmdit_layers=2, num_single_dit_layers=8, attention_head_dim=8,
                   num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                   out_channels=4, pos_embed_max_size=256),
        lambda: dict(hidden_states=_r(1, 4, 16, 16), encoder_hidden_states=_r(1, 8, 16),
                     timestep=torch.tensor([500]), return_dict=False),
    ),
    "PixArtTransformer2DModel": Case(
        "image",
        _diffusers("PixArtTransformer2DModel", sample_size=8, num_layers=8, patch_size=2,
                   attention_head_dim=8, num_attention_heads=3, caption_channels=32, in_channels=4,
                   cross_attention_dim=24, out_channels=8, attention_bias=True,
                   activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                   norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6),
        lambda: dict(hidden_states=_r(1, 4, 8, 8), encoder_hidden_states=_r(1, 8, 32),
                     timestep=torch.tensor([500]), added_cond_kwargs={"aspect_ratio": None,
                                                                      "resolution": None},
                     return_dict=False),
    ),
    "DiTTransformer2DModel": Case(
        "image",
        _diffusers("DiTTransformer2DModel", num_attention_heads=2, attention_head_dim=8,
                   in_channels=4, num_layers=8, sample_size=8, patch_size=2, norm_num_groups=4),
        lambda: dict(hidden_states=_r(1, 4, 8, 8), timestep=torch.tensor([500]),
                     class_labels=torch.tensor([3]), return_dict=False),
    ),
    "UNet2DModel": Case(
        "unet",
        _diffusers("UNet2DModel", sample_size=16, in_channels=3, out_channels=3,
                   block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=4,
                   attention_head_dim=4,
                   down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D")),
        lambda: dict(sample=_r(1, 3, 16, 16), timestep=torch.tensor([10]), return_dict=False),
    ),
    "UNet3DConditionModel": Case(
        "unet",
        _diffusers("UNet3DConditionModel", block_out_channels=(16, 16, 16), norm_num_groups=4,
                   down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                   up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
                   cross_attention_dim=8, attention_head_dim=4, out_channels=4, in_channels=4,
                   layers_per_block=1, sample_size=16),
        lambda: dict(sample=_r(1, 4, 2, 16, 16), timestep=torch.tensor([10]),
                     encoder_hidden_states=_r(1, 4, 8), return_dict=False),
    ),
    "UNetSpatioTemporalConditionModel": Case(
        "unet",
        _diffusers("UNetSpatioTemporalConditionModel", block_out_channels=(32, 32, 32),
                   layers_per_block=1, sample_size=16, in_channels=8, out_channels=4,
                   down_block_types=("CrossAttnDownBlockSpatioTemporal",
                                     "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                   up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
                                   "CrossAttnUpBlockSpatioTemporal"),
                   cross_attention_dim=8, num_attention_heads=(2, 2, 2), addition_time_embed_dim=4,
                   projection_class_embeddings_input_dim=12),
        lambda: dict(sample=_r(1, 2, 8, 16, 16), timestep=torch.tensor([10]),
                     encoder_hidden_states=_r(1, 1, 8), added_time_ids=_r(1, 3), return_dict=False),
    ),
    "LatteTransformer3DModel": Case(
        "video",
        _diffusers("LatteTransformer3DModel", num_attention_heads=2, attention_head_dim=8,
                   in_channels=4, out_channels=8, num_layers=8, cross_attention_dim=16,
                   sample_size=8, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_single",
                   norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=32,
                   video_length=2, activation_fn="gelu-approximate"),
        lambda: dict(hidden_states=_r(1, 4, 2, 8, 8), timestep=torch.tensor([500]),
                     encoder_hidden_states=_r(1, 8, 32), enable_temporal_attentions=True,
                     return_dict=False),
    ),
    "Kandinsky5Transformer3DModel": Case(
        "video",
        _diffusers("Kandinsky5Transformer3DModel", in_visual_dim=4, in_text_dim=16, in_text_dim2=8,
                   time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2), model_dim=32, ff_dim=64,
                   num_text_blocks=1, num_visual_blocks=8, axes_dims=(4, 6, 6)),
        lambda: dict(hidden_states=_r(1, 1, 8, 8, 4), encoder_hidden_states=_r(1, 6, 16),
                     timestep=torch.tensor([500.0]), pooled_projections=_r(1, 8),
                     visual_rope_pos=[torch.arange(1), torch.arange(4), torch.arange(4)],
                     text_rope_pos=torch.arange(6), return_dict=False),
    ),
    "T5EncoderModel": Case(
        "text",
        lambda: _t5(),
        lambda: dict(input_ids=torch.randint(0, 64, (1, 12)), return_dict=False),
    ),
    "Qwen2Model": Case(
        "text",
        lambda: _qwen2(),
        lambda: dict(input_ids=torch.randint(0, 64, (1, 12)), return_dict=False, use_cache=False),
    ),
}


def _t5():
    import transformers

    config = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=8,
                                   num_heads=4, relative_attention_num_buckets=8)
    return transformers.T5EncoderModel(config).eval()


def _qwen2():
    import transformers

    config = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=8, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64)
    return transformers.Qwen2Model(config).eval()
