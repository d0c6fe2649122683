"""Generate one image with a plan applied: load a local FLUX pipeline, encode the prompt and
drop the text encoders, denoise with the transformer under the plan, decode, measure.

Nothing is fetched from a hub: loading is `local_files_only` with `HF_HUB_OFFLINE=1`.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import statistics
from pathlib import Path

from runtime.errors import UserError


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    weights: Path  # a diffusers FLUX pipeline folder
    prompt: str
    output: Path
    steps: int
    seed: int = 0
    guidance: float = 3.5
    height: int | None = None  # default: the plan's workload
    width: int | None = None
    transformer_file: Path | None = None  # single-file transformer, diffusers or BFL naming
    device: str | None = None


@dataclasses.dataclass(frozen=True)
class GenerateResult:
    output: str
    device: str
    steps: int
    step_ms: tuple[float, ...]  # each denoising step
    seconds_per_step: float
    peak_vram_bytes: int | None  # None where not measured (CPU)
    predicted_peak_vram_bytes: int
    lower_bound_ms: float
    ratio_to_lower_bound: float | None  # measured step time / the plan's lower bound
    device_weight_bytes: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"step_ms": list(self.step_ms)}


def load_pipeline(weights: Path, transformer_file: Path | None, dtype):
    """A FluxPipeline from a local folder, its transformer optionally from one safetensors file."""
    import torch  # noqa: F401
    from diffusers import FluxPipeline

    os.environ["HF_HUB_OFFLINE"] = "1"
    weights = Path(weights)
    if not (weights / "model_index.json").is_file():
        raise UserError(
            f"weights folder {weights} has no model_index.json: give a local diffusers FLUX "
            f"pipeline folder (save_pretrained or a downloaded snapshot)"
        )
    extra = {}
    if transformer_file is not None:
        extra["transformer"] = _transformer_from_file(weights, Path(transformer_file))
    return FluxPipeline.from_pretrained(
        weights, local_files_only=True, torch_dtype=dtype, **extra
    )


def _transformer_from_file(weights: Path, path: Path):
    """Build the transformer from the folder's config and load one file's tensors as they are
    stored (an fp8 checkpoint stays fp8), in diffusers or original (BFL/ComfyUI) naming."""
    from diffusers import FluxTransformer2DModel

    from runtime.checkpoint.load import load_transformer

    config = FluxTransformer2DModel.load_config(weights, subfolder="transformer")
    return load_transformer(path, config, family="flux")


def _encode(pipe, prompt: str, max_sequence_length: int, device):
    """Run both text encoders (on the device if they fit, else on the CPU), then drop them."""
    import torch

    target = torch.device("cpu")
    if device.type == "cuda":
        size = sum(
            p.numel() * p.element_size()
            for enc in (pipe.text_encoder, pipe.text_encoder_2) for p in enc.parameters()
        )
        if size < torch.cuda.mem_get_info(device)[0] * 0.9:
            target = device
    pipe.text_encoder.to(target)
    pipe.text_encoder_2.to(target)
    with torch.no_grad():
        embeds, pooled, _ = pipe.encode_prompt(
            prompt, prompt_2=None, device=target, max_sequence_length=max_sequence_length
        )
    pipe.text_encoder = None  # drop-and-reload: the next run loads them again
    pipe.text_encoder_2 = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return embeds.to(device), pooled.to(device)


def generate(plan, config: GenerateConfig) -> GenerateResult:
    import torch

    from runtime.apply import _resolve_device, apply_plan

    if config.steps < 1:
        raise UserError(f"steps {config.steps} is not usable: give 1 or more")
    device = _resolve_device(config.device)
    height = config.height or plan.workload.height
    width = config.width or plan.workload.width
    pipe = load_pipeline(config.weights, config.transformer_file, plan.model.compute_dtype.torch())
    handle = apply_plan(pipe, plan, device)
    try:
        embeds, pooled = _encode(pipe, config.prompt, plan.workload.text_tokens, device)
        pipe.vae.to(device)
        generator = torch.Generator("cpu").manual_seed(config.seed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        handle.enable_timing()
        latents = pipe(
            prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_inference_steps=config.steps,
            guidance_scale=config.guidance, height=height, width=width, generator=generator,
            max_sequence_length=plan.workload.text_tokens, output_type="latent",
        ).images
        forward_ms = handle.timings()
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        stats = handle.stats
        image = _decode(pipe, latents, height, width)
    finally:
        handle.remove()
    Path(config.output).parent.mkdir(parents=True, exist_ok=True)
    image.save(config.output)
    per = plan.workload.forwards_per_step
    step_ms = tuple(sum(forward_ms[i:i + per]) for i in range(0, len(forward_ms), per))
    mean_ms = statistics.fmean(step_ms) if step_ms else 0.0
    lower = plan.predictions.lower_bound_ms
    return GenerateResult(
        output=str(config.output), device=str(device), steps=config.steps, step_ms=step_ms,
        seconds_per_step=mean_ms / 1000.0, peak_vram_bytes=peak,
        predicted_peak_vram_bytes=plan.predictions.peak_vram_bytes, lower_bound_ms=lower,
        ratio_to_lower_bound=(mean_ms / lower) if lower > 0 else None,
        device_weight_bytes=stats.device_weight_bytes,
    )


def _decode(pipe, latents, height: int, width: int):
    import torch

    with torch.no_grad():
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        image = pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="pil")[0]


def record_run(url: str | None, plan, result: GenerateResult) -> int:
    """Save the plan and this measured run in the store (db.store)."""
    from db.store import open_store

    with open_store(url) as store:
        plan_id = store.save_plan(plan)
        return store.record_run(
            plan_id, result.seconds_per_step * 1000.0, result.peak_vram_bytes or 0, result.device,
        )
