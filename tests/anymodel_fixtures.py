"""Tiny, real diffusers pipelines of classes that have no family adapter, and image-conditioned
variants of those that have one, built locally (nothing downloaded; tokenizers from the
`tokenizers` library, as tests/pipeline_fixtures.py makes them).

- `sana`: SanaPipeline (SanaTransformer2DModel, Gemma2 text encoder, AutoencoderDC): no adapter.
- `lumina2`: Lumina2Pipeline (Lumina2Transformer2DModel, Gemma2, AutoencoderKL): no adapter.
- `cogview4`: CogView4Pipeline (CogView4Transformer2DModel, GLM, AutoencoderKL): no adapter.
- `mochi`: MochiPipeline (MochiTransformer3DModel, T5, AutoencoderKLMochi): video, no adapter.
- `wan-i2v`: WanImageToVideoPipeline, Wan 2.2 I2V style (36 input channels, no image encoder).
- `wan-i2v-clip`: the same, Wan 2.1 I2V style (a CLIP vision encoder; `image_dim` set).
- `wan-experts`: WanPipeline with two experts (Wan 2.2 A14B's layout).
- `build_stable_cascade`: a prior + decoder cascade (in memory only).
- `flux`, `flux-kontext`: FluxPipeline and FluxKontextPipeline around the same tiny-flux.
"""

from __future__ import annotations

from pathlib import Path


def build_sana(seed: int = 0):
    import torch
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    from tests.pipeline_fixtures import tiny_tokenizers

    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=4, num_attention_heads=2,
        attention_head_dim=16, num_cross_attention_heads=2, cross_attention_head_dim=16,
        cross_attention_dim=32, caption_channels=16, sample_size=16,
    )
    # SanaPipeline bins the size asked for to its 512 table (sample_size 16): a 32x DC-AE, as
    # Sana's, keeps 512x512 at 16x16 latent tokens
    levels = 6
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2,
        encoder_block_types=("ResBlock",) * levels, decoder_block_types=("ResBlock",) * levels,
        encoder_block_out_channels=(4,) * levels, decoder_block_out_channels=(4,) * levels,
        encoder_qkv_multiscales=((),) * levels, decoder_qkv_multiscales=((),) * levels,
        encoder_layers_per_block=(1,) * levels, decoder_layers_per_block=[1] * levels,
        downsample_block_type="conv", upsample_block_type="interpolate",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407,
    )
    _, _, tokenizer, vocab = tiny_tokenizers()
    text_encoder = _gemma2(vocab)
    return SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(),
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def build_lumina2(seed: int = 0):
    """Lumina2Pipeline (Lumina2Transformer2DModel, Gemma2 text encoder, AutoencoderKL): no
    adapter."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    from tests.pipeline_fixtures import tiny_tokenizers, tiny_vae

    torch.manual_seed(seed)
    transformer = Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=32, num_layers=4,
        num_refiner_layers=1, num_attention_heads=4, num_kv_heads=2, multiple_of=16,
        axes_dim_rope=(4, 2, 2), axes_lens=(64, 32, 32), cap_feat_dim=16,
    )
    _, _, tokenizer, vocab = tiny_tokenizers()
    text_encoder = _gemma2(vocab)
    return Lumina2Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(4, scaling_factor=0.3611, shift_factor=0.1159).eval(),
        text_encoder=text_encoder.eval(), tokenizer=tokenizer,
    )


def _gemma2(vocab: int):
    """The tiny Gemma2 text encoder Sana and Lumina 2 take."""
    from transformers import Gemma2Config, Gemma2Model

    return Gemma2Model(Gemma2Config(
        head_dim=8, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=2, num_key_value_heads=1, vocab_size=vocab, pad_token_id=0,
        bos_token_id=1, eos_token_id=1,
    ))


def _glm_tokenizer():
    """A word-level tokenizer that starts every text with GLM's `[gMASK]<sop>`, as GLM-4's
    does (CogView4's empty negative prompt is those two tokens, not nothing)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from tests.pipeline_fixtures import _word_level

    tok, vocab = _word_level(["<pad>", "[gMASK]", "<sop>", "<unk>"], "<unk>")
    tok.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A", special_tokens=[("[gMASK]", 1), ("<sop>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   model_max_length=1024, padding_side="left")
    return fast, vocab


def build_cogview4(seed: int = 0):
    """CogView4Pipeline (CogView4Transformer2DModel, a GLM text encoder, AutoencoderKL): no
    adapter."""
    import torch
    from diffusers import CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import GlmConfig, GlmModel

    from tests.pipeline_fixtures import tiny_vae

    torch.manual_seed(seed)
    transformer = CogView4Transformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=4, attention_head_dim=8,
        num_attention_heads=4, text_embed_dim=32, time_embed_dim=8, condition_dim=4,
        sample_size=8, rope_axes_dim=(4, 4),
    )
    tokenizer, vocab = _glm_tokenizer()
    text_encoder = GlmModel(GlmConfig(
        hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, vocab_size=vocab, pad_token_id=0,
    ))
    return CogView4Pipeline(
        tokenizer=tokenizer, text_encoder=text_encoder.eval(),
        vae=tiny_vae(4, scaling_factor=1.0).eval(), transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(base_shift=0.25, max_shift=0.75,
                                                  base_image_seq_len=256, use_dynamic_shifting=True,
                                                  time_shift_type="linear"),
    )


def build_mochi(seed: int = 0):
    """MochiPipeline (MochiTransformer3DModel, T5, AutoencoderKLMochi): video, no adapter."""
    import torch
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from tests.pipeline_fixtures import tiny_tokenizers

    torch.manual_seed(seed)
    transformer = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=4,
        pooled_projection_dim=16, in_channels=12, text_embed_dim=32, time_embed_dim=4,
        max_sequence_length=16,
    )
    vae = AutoencoderKLMochi(
        latent_channels=12, out_channels=3, encoder_block_out_channels=(32,) * 4,
        decoder_block_out_channels=(32,) * 4, layers_per_block=(1,) * 5,
    )
    _, _, tokenizer, vocab = tiny_tokenizers()
    text_encoder = T5EncoderModel(T5Config(d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
                                           vocab_size=vocab, pad_token_id=0, eos_token_id=1))
    return MochiPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae.eval(),
                         text_encoder=text_encoder.eval(), tokenizer=tokenizer, transformer=transformer)


def build_wan_i2v(seed: int = 0, clip: bool = False):
    """WanImageToVideoPipeline: tiny-wan's blocks taking 36 channels (16 noise + 16 image
    latents + 4 mask); with `clip`, Wan 2.1's CLIP image encoder and `image_dim`."""
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    from runtime.catalog import get_model
    from runtime.families import get_family
    from tests.pipeline_fixtures import tiny_tokenizers

    torch.manual_seed(seed)
    config = dict(get_model("tiny-wan").config) | {"in_channels": 36, "out_channels": 16}
    extra = {}
    if clip:
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

        config |= {"image_dim": 16, "added_kv_proj_dim": 32}
        extra["image_encoder"] = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
            image_size=32, patch_size=8, projection_dim=16,
        )).eval()
        extra["image_processor"] = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})
    transformer = get_family("wan").build(config, device="cpu")
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    _, _, tokenizer, vocab = tiny_tokenizers()
    text_encoder = UMT5EncoderModel(UMT5Config(
        d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2, vocab_size=vocab,
        pad_token_id=0, eos_token_id=1,
    ))
    return WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), transformer=transformer, **extra,
    )


def build_wan_two_experts(seed: int = 0, boundary_ratio: float = 0.5):
    """WanPipeline with two tiny-wan experts (Wan 2.2 A14B's layout): `transformer` for the
    high-noise steps, `transformer_2` (its weights from seed + 1) after `boundary_ratio`."""
    import torch
    from diffusers import WanPipeline

    from runtime.catalog import get_model
    from runtime.families import get_family
    from tests.family_support.wan import build_tiny_pipeline

    parts = build_tiny_pipeline("tiny-wan", seed).components
    torch.manual_seed(seed + 1)
    second = get_family("wan").build(get_model("tiny-wan").config, device="cpu")
    return WanPipeline(**parts | {"transformer_2": second, "boundary_ratio": boundary_ratio})


def build_stable_cascade(seed: int = 0):
    """StableCascadeCombinedPipeline, a prior + decoder cascade (two StableCascadeUNets, a
    CLIP text encoder each, a Paella VQ-GAN), in memory only: diffusers 0.42.1 cannot load
    a saved one (`PaellaVQModel` is no longer exported where model_index.json says)."""
    import torch
    from diffusers import DDPMWuerstchenScheduler, StableCascadeCombinedPipeline, StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from tests.pipeline_fixtures import tiny_tokenizers

    torch.manual_seed(seed)
    tokenizer, vocab, _, _ = tiny_tokenizers()

    def text_encoder():
        return CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=32, intermediate_size=37, projection_dim=32, num_attention_heads=4,
            num_hidden_layers=2, vocab_size=vocab, max_position_embeddings=77, bos_token_id=0,
            eos_token_id=1, pad_token_id=1,
        )).eval()

    prior = StableCascadeUNet(
        in_channels=16, out_channels=16, conditioning_dim=32, block_out_channels=(32, 32),
        num_attention_heads=(2, 2), down_num_layers_per_block=(2, 2), up_num_layers_per_block=(2, 2),
        switch_level=(False,), clip_image_in_channels=32, clip_text_in_channels=32,
        clip_text_pooled_in_channels=32, dropout=(0.0, 0.0),
    )
    resnet = ["SDCascadeResBlock", "SDCascadeTimestepBlock"]
    decoder = StableCascadeUNet(
        in_channels=4, out_channels=4, conditioning_dim=32, block_out_channels=[16, 32],
        num_attention_heads=[-1, 2], down_num_layers_per_block=[1, 2], up_num_layers_per_block=[2, 1],
        down_blocks_repeat_mappers=[1, 1], up_blocks_repeat_mappers=[1, 1],
        block_types_per_layer=[resnet, resnet + ["SDCascadeAttnBlock"]], switch_level=None,
        clip_text_pooled_in_channels=32, effnet_in_channels=16, pixel_mapper_in_channels=3,
        dropout=[0.0, 0.0],
    )
    vqgan = PaellaVQModel(up_down_scale_factor=2, levels=2, bottleneck_blocks=1, embed_dim=8,
                          latent_channels=4, num_vq_embeddings=16)
    return StableCascadeCombinedPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder(), decoder=decoder,
        scheduler=DDPMWuerstchenScheduler(), vqgan=vqgan.eval(), prior_prior=prior,
        prior_text_encoder=text_encoder(), prior_tokenizer=tokenizer,
        prior_scheduler=DDPMWuerstchenScheduler(),
    )


def build_flux_kontext(seed: int = 0):
    """FluxKontextPipeline around the tiny FLUX pipeline's parts (the catalog's tiny-flux):
    the conditioning image's latent tokens are appended to the sequence."""
    from diffusers import FluxKontextPipeline

    from tests.pipeline_fixtures import build_tiny_pipeline

    return FluxKontextPipeline(**build_tiny_pipeline(seed).components)


def build_flux(seed: int = 0):
    from tests.pipeline_fixtures import build_tiny_pipeline

    return build_tiny_pipeline(seed)


BUILDERS = {
    "mochi": build_mochi,
    "cogview4": build_cogview4,
    "lumina2": build_lumina2,
    "wan-experts": build_wan_two_experts,
    "flux": build_flux,
    "flux-kontext": build_flux_kontext,
    "sana": build_sana,
    "wan-i2v": build_wan_i2v,
    "wan-i2v-clip": lambda seed=0: build_wan_i2v(seed, clip=True),
}


def save_pipeline(name: str, path: Path, seed: int = 0) -> Path:
    BUILDERS[name](seed).save_pretrained(path, safe_serialization=True)
    return path


def save_image(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    """A conditioning image (a red square on blue) as PNG."""
    from PIL import Image

    image = Image.new("RGB", size, (20, 20, 200))
    image.paste((200, 20, 20), (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4))
    image.save(path)
    return path


def no_ftfy(monkeypatch) -> None:
    """diffusers' Wan image-to-video pipeline calls `ftfy.fix_text` even where ftfy is not
    installed (its text-to-video pipeline checks first): the environment seam, as it checks."""
    import types

    from diffusers.pipelines.wan import pipeline_wan_i2v

    if not hasattr(pipeline_wan_i2v, "ftfy"):
        monkeypatch.setattr(pipeline_wan_i2v, "ftfy", types.SimpleNamespace(fix_text=lambda s: s),
                            raising=False)
