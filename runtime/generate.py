"""Generate one image (or clip) with a plan applied: load the model family's local diffusers
pipeline, encode the prompt and drop the text encoders, denoise with the transformer under the
plan, decode, measure. The family adapter says how its pipeline is driven.

Nothing is fetched from a hub: loading is `local_files_only` with `HF_HUB_OFFLINE=1`.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import statistics
from pathlib import Path

from runtime.errors import PlanMismatchError, UserError


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    weights: Path  # a local diffusers pipeline folder of the plan's model family
    prompt: str
    output: Path
    steps: int
    seed: int = 0
    guidance: float = 3.5
    guidance_2: float | None = None  # a later expert's steps (Wan 2.2 A14B); None: `guidance`
    height: int | None = None  # default: the plan's workload
    width: int | None = None
    frames: int | None = None  # default: the plan's workload
    transformer_file: Path | None = None  # single-file transformer, diffusers or original naming
    transformer_2_file: Path | None = None  # the second expert's (Wan 2.2 A14B's low-noise) file
    device: str | None = None
    loras: tuple = ()  # runtime.lora.LoraSpec, loaded before the plan is applied
    record_stats: Path | None = None  # add this run's activation statistics to this file


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
    phase_peak_vram_bytes: dict | None = None  # encode, load_vae, denoise, decode (CUDA only)
    adapter_bytes: int = 0  # LoRA weights the engine placed (counted in device_weight_bytes
    # where resident, in the ring's slots where streamed)
    expert_step_ms: dict | None = None  # two experts: each one's step times (ms)
    switch_ms: tuple[float, ...] = ()  # two experts: each switch's wall time (ms)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {
            "step_ms": list(self.step_ms), "switch_ms": list(self.switch_ms),
            "expert_step_ms": {k: list(v) for k, v in (self.expert_step_ms or {}).items()} or None,
        }


def load_pipeline(adapter, weights: Path, transformer_file: Path | None, dtype,
                  transformer_2_file: Path | None = None):
    """The family's pipeline from a local folder, its transformer (and a second expert's)
    optionally from one single file each."""
    import torch  # noqa: F401

    os.environ["HF_HUB_OFFLINE"] = "1"
    weights = Path(weights)
    pipeline_class = adapter.pipeline_class()
    if not (weights / "model_index.json").is_file():
        raise UserError(
            f"weights folder {weights} has no model_index.json: give a local diffusers "
            f"{pipeline_class.__name__} folder (save_pretrained or a downloaded snapshot)"
        )
    extra = {}
    if transformer_file is not None:
        extra[adapter.denoiser] = _transformer_from_file(adapter, weights, Path(transformer_file))
    if transformer_2_file is not None:
        extra["transformer_2"] = _transformer_from_file(
            adapter, weights, Path(transformer_2_file), subfolder="transformer_2"
        )
    pipe = pipeline_class.from_pretrained(
        weights, local_files_only=True, dtype=dtype, use_safetensors=True, **extra
    )
    for name in (adapter.denoiser, "transformer_2"):
        if name not in extra:  # a single file keeps the dtypes it stores
            _drop_fp32_kept(getattr(pipe, name, None), dtype)
    return pipe


def _drop_fp32_kept(model, dtype) -> None:
    """fp32 tensors of a model loaded in a 16-bit `dtype`, cast to it. diffusers keeps a
    class's `_keep_in_fp32_modules` (Wan's norms, modulation tables, time embedder, rotary
    tables) in fp32 when loading; a plan stores the model in one dtype, as the released bf16
    single files do, and those modules compute in fp32 inside their forward anyway."""
    import torch

    kept = getattr(model, "_keep_in_fp32_modules", None)
    if not kept or dtype not in (torch.bfloat16, torch.float16):
        return
    named = list(model.named_parameters()) + list(model.named_buffers())
    for name, tensor in named:  # diffusers' own rule: a kept module's name is a path component
        if tensor.dtype == torch.float32 and any(m in name.split(".") for m in kept):
            tensor.data = tensor.data.to(dtype)


def _transformer_from_file(adapter, weights: Path, path: Path, subfolder: str | None = None):
    """Build the transformer from the folder's config (its `subfolder`, default the family's
    denoiser) and load one file's tensors as they are stored (an fp8 checkpoint stays fp8), in
    diffusers or the family's original naming."""
    from runtime.checkpoint.load import load_transformer

    config = adapter.model_class().load_config(weights, subfolder=subfolder or adapter.denoiser)
    return load_transformer(path, config, family=adapter.name)


def _prompt_kwargs(adapter, pipe, prompt: str, workload, guidance: float, device) -> dict:
    """Run the text encoders (on the device if they fit, else on the CPU), then drop them."""
    import torch

    encoders = [getattr(pipe, name, None) for name in adapter.text_encoders]
    encoders = [enc for enc in encoders if enc is not None]
    target = torch.device("cpu")
    if device.type == "cuda":
        size = sum(p.numel() * p.element_size() for enc in encoders for p in enc.parameters())
        if size < torch.cuda.mem_get_info(device)[0] * 0.9:
            target = device
    for enc in encoders:
        enc.to(target)
    with torch.no_grad():
        kwargs = adapter.prompt_kwargs(pipe, prompt, workload, guidance, target)
    for name in adapter.text_encoders:  # drop-and-reload: the next run loads them again
        if hasattr(pipe, name):  # a family's pipelines may lack one (SD 1.5 has one CLIP)
            setattr(pipe, name, None)
    del encoders
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # tensors, and lists of them (Z-Image's pipeline takes one embedding per prompt), move
    return {k: torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.to(device), v)
            for k, v in kwargs.items()}


def generate(plan, config: GenerateConfig) -> GenerateResult:
    import dataclasses as dc

    import torch

    from runtime.apply import apply_plan
    from runtime.engine.device import resolve_device
    from runtime.catalog import get_model
    from runtime.families import get_family
    from runtime.lora import load_loras

    if config.steps < 1:
        raise UserError(f"steps {config.steps} is not usable: give 1 or more")
    device = resolve_device(config.device)
    adapter = get_family(get_model(plan.model.id).family)
    workload = dc.replace(
        plan.workload, height=config.height or plan.workload.height,
        width=config.width or plan.workload.width,
        frames=config.frames if config.frames is not None else plan.workload.frames,
    )
    pipe = load_pipeline(
        adapter, config.weights, config.transformer_file, plan.model.compute_dtype.torch(),
        config.transformer_2_file,
    )
    load_loras(pipe, config.loras)
    try:
        handle = apply_plan(pipe, plan, device)
    except PlanMismatchError as e:
        if not config.loras:
            raise
        files = ", ".join(str(lora.path) for lora in config.loras)
        raise PlanMismatchError(
            f"loading --lora {files} changed the transformer's base weights (diffusers widens "
            f"layers for control LoRAs), so the plan no longer fits it ({e})"
        ) from e
    phases = _PhasePeaks(device)
    try:
        kwargs = _prompt_kwargs(adapter, pipe, config.prompt, workload, config.guidance, device)
        if config.guidance_2 is not None:
            kwargs.update(adapter.second_guidance_kwargs(pipe, config.guidance_2))
        phases.close("encode")
        pipe.vae.to(device)
        generator = torch.Generator("cpu").manual_seed(config.seed)
        phases.close("load_vae")
        handle.enable_timing()
        recorder = _recorder(pipe, adapter, config.record_stats)
        try:
            latents = pipe(
                **kwargs, num_inference_steps=config.steps, height=workload.height,
                width=workload.width, generator=generator, output_type="latent", return_dict=False,
            )[0]  # FLUX's images, a video pipeline's frames: the first output either way
        finally:
            if recorder is not None:
                recorder.remove()
        if recorder is not None:
            recorder.collect().save(config.record_stats)
        forward_ms = handle.timings()
        by_expert = _expert_step_ms(handle, plan.workload.forwards_per_step)
        peak = phases.close("denoise")
        stats = handle.stats
        handle.remove()  # the denoiser leaves the device before the decode, whose peak
        # (a video VAE's above all) then has the memory the plan held
        frames = adapter.decode(pipe, latents, workload)
        phases.close("decode")
    finally:
        handle.remove()
    Path(config.output).parent.mkdir(parents=True, exist_ok=True)
    save_frames(frames, Path(config.output))
    per = plan.workload.forwards_per_step
    if by_expert[0] is not None:  # whole steps of each expert, the one it switched in left out
        step_ms = tuple(ms for steps in by_expert[0].values() for ms in steps)
    else:
        step_ms = tuple(sum(forward_ms[i:i + per]) for i in range(0, len(forward_ms), per))
    mean_ms = statistics.fmean(step_ms) if step_ms else 0.0
    lower = plan.predictions.lower_bound_ms
    return GenerateResult(
        output=str(config.output), device=str(device), steps=config.steps, step_ms=step_ms,
        seconds_per_step=mean_ms / 1000.0, peak_vram_bytes=peak,
        predicted_peak_vram_bytes=plan.predictions.peak_vram_bytes, lower_bound_ms=lower,
        ratio_to_lower_bound=(mean_ms / lower) if lower > 0 else None,
        device_weight_bytes=stats.device_weight_bytes, adapter_bytes=stats.adapter_bytes,
        phase_peak_vram_bytes=phases.peaks or None,
        expert_step_ms=by_expert[0], switch_ms=by_expert[1],
    )


def _recorder(pipe, adapter, path: Path | None):
    """Activation statistics hooks on the denoiser (`runtime.analysis.stats`), if asked."""
    from runtime.analysis.stats import record_stats

    if path is None:
        return None
    model = getattr(pipe, adapter.denoiser)
    return record_stats(model, adapter.blocks(model))


def _expert_step_ms(handle, per: int) -> tuple[dict | None, tuple[float, ...]]:
    """({expert: its steps' times}, each switch's time) of a two-expert run; (None, ())
    otherwise. A step is `per` timed forwards of one expert; the step an expert is switched in
    is left out (its first forward runs the switch and is not timed)."""
    timed = getattr(handle, "timed", None)
    if timed is None:
        return None, ()
    forwards: dict[str, list[float]] = {}
    for expert, ms in timed():
        forwards.setdefault(expert, []).append(ms)
    steps = {}
    for expert, f in forwards.items():
        f = f[len(f) % per:]
        steps[expert] = tuple(sum(f[i:i + per]) for i in range(0, len(f), per))
    return steps, tuple(handle.switch_ms)


class _PhasePeaks:
    """Peak device memory of each phase of a run (encode, denoise, decode); nothing on CPU."""

    def __init__(self, device) -> None:
        import torch

        self.device = device
        self.cuda = device.type == "cuda"
        self.peaks: dict[str, int] = {}
        if self.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)

    def close(self, phase: str) -> int | None:
        """The peak since the last phase closed, recorded under `phase`; the next one starts."""
        import torch

        if not self.cuda:
            return None
        torch.cuda.synchronize(self.device)
        self.peaks[phase] = int(torch.cuda.max_memory_allocated(self.device))
        torch.cuda.reset_peak_memory_stats(self.device)
        return self.peaks[phase]


def save_frames(frames: list, output: Path) -> None:
    """One frame as an image; several as an animated file (GIF or WebP, by the suffix)."""
    if len(frames) == 1:
        frames[0].save(output)
        return
    frames[0].save(output, save_all=True, append_images=frames[1:], duration=1000 // 16, loop=0)
