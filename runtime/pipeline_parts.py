"""What a released pipeline holds beside its transformer: text encoders and the VAE.

The host-memory model (`planner.host_peak`) counts them in the phases that hold them: the text
encoders while the prompt is encoded, the VAE while the latents are decoded. Parameter counts
are the publishers' (model cards and the configs of the released checkpoints); the pipelines
load them in the compute dtype (bf16/fp16: 2 bytes a parameter). Test models (`tiny-*`) have
parts of a few KiB: 0 here.
"""

from __future__ import annotations

import dataclasses

from runtime.catalog import find_model
from runtime.dtypes import compute_dtype


@dataclasses.dataclass(frozen=True)
class PipelineParts:
    text_encoder_params: int  # every text encoder of the pipeline, together
    vae_params: int
    source: str

    def bytes(self, element_size: int) -> tuple[int, int]:
        """(text encoders, VAE) in bytes at `element_size` bytes a parameter."""
        return self.text_encoder_params * element_size, self.vae_params * element_size


_T5_XXL = 4_762_310_656  # google/t5-v1_1-xxl encoder (T5EncoderModel of FLUX/SD3/Chroma/LTX)
_CLIP_L = 123_060_480  # openai/clip-vit-large-patch14 text model
_CLIP_G = 694_659_840  # laion CLIP-ViT-bigG-14 text model (SD3, SDXL)
_FLUX_VAE = 83_819_683  # AutoencoderKL of FLUX.1 (16 latent channels)
_SD_VAE = 83_653_863  # AutoencoderKL of SD 1.5/SDXL/SD3
_WAN_VAE = 126_892_531  # AutoencoderKLWan (Wan 2.1, Qwen-Image)
_UMT5_XXL = 5_680_910_336  # google/umt5-xxl encoder (Wan)
_QWEN25_VL_7B = 8_292_166_656  # Qwen2.5-VL-7B-Instruct (Qwen-Image, HunyuanImage 2.1)

_PARTS = {
    "flux-dev": PipelineParts(_T5_XXL + _CLIP_L, _FLUX_VAE, "T5-XXL + CLIP-L, FLUX.1 VAE"),
    "flux-schnell": PipelineParts(_T5_XXL + _CLIP_L, _FLUX_VAE, "T5-XXL + CLIP-L, FLUX.1 VAE"),
    "flux2-dev": PipelineParts(24_011_361_280, 84_046_115, "Mistral-Small-3.1-24B, FLUX.2 VAE"),
    "chroma": PipelineParts(_T5_XXL, _FLUX_VAE, "T5-XXL, FLUX.1 VAE"),
    "sd3.5-large": PipelineParts(_T5_XXL + _CLIP_L + _CLIP_G, _SD_VAE, "T5-XXL + CLIP-L + CLIP-G, SD3 VAE"),
    "sd3.5-medium": PipelineParts(_T5_XXL + _CLIP_L + _CLIP_G, _SD_VAE, "T5-XXL + CLIP-L + CLIP-G, SD3 VAE"),
    "z-image-turbo": PipelineParts(4_022_468_096, _FLUX_VAE, "Qwen3-4B, FLUX.1 VAE"),
    "qwen-image": PipelineParts(_QWEN25_VL_7B, _WAN_VAE, "Qwen2.5-VL-7B, Qwen-Image VAE"),
    "hunyuanimage-2.1": PipelineParts(_QWEN25_VL_7B + 218_000_000, 406_000_000,
                                      "Qwen2.5-VL-7B + ByT5 glyph encoder (approx.), 32x VAE (approx.)"),
    "sdxl": PipelineParts(_CLIP_L + _CLIP_G, _SD_VAE, "CLIP-L + CLIP-G, SDXL VAE"),
    "sd1.5": PipelineParts(_CLIP_L, _SD_VAE, "CLIP-L, SD VAE"),
    "wan2.1-t2v-14b": PipelineParts(_UMT5_XXL, _WAN_VAE, "umT5-XXL, Wan 2.1 VAE"),
    "wan2.1-t2v-1.3b": PipelineParts(_UMT5_XXL, _WAN_VAE, "umT5-XXL, Wan 2.1 VAE"),
    "wan2.2-t2v-a14b": PipelineParts(_UMT5_XXL, _WAN_VAE, "umT5-XXL, Wan 2.1 VAE"),
    "wan2.2-ti2v-5b": PipelineParts(_UMT5_XXL, 704_000_000, "umT5-XXL, Wan 2.2 VAE (approx.)"),
    "ltx-video-13b": PipelineParts(_T5_XXL, 935_000_000, "T5-XXL, LTX-Video VAE (approx.)"),
    "hunyuanvideo": PipelineParts(8_030_261_248 + _CLIP_L, 246_000_000, "llava-llama-3-8B + CLIP-L, HunyuanVideo VAE"),
}
_NONE = PipelineParts(0, 0, "a test model: parts of a few KiB")


def pipeline_parts(model_id: str) -> PipelineParts:
    """The model's parts; none for a test model or a module outside the catalog."""
    return _PARTS.get(model_id, _NONE)


def parts_bytes(model_id: str) -> tuple[int, int]:
    """(text encoders, VAE) bytes as the model's pipeline loads them (its compute dtype)."""
    spec = find_model(model_id)
    if spec is None:
        return 0, 0
    return pipeline_parts(model_id).bytes(compute_dtype(spec.storage_dtype).element_size)
