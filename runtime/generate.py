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

from runtime.components import drop_fp32_kept, module_bytes, pipeline_class_name
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
    image: Path | None = None  # the conditioning image of an image-to-video variant


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
    phase_peak_vram_bytes: dict | None = None  # encode, load, load_vae, denoise, decode (CUDA only)
    phase_peak_host_bytes: dict | None = None  # the same phases' RSS high-water (host memory)
    adapter_bytes: int = 0  # LoRA weights the engine placed (counted in device_weight_bytes
    # where resident, in the ring's slots where streamed)
    expert_step_ms: dict | None = None  # two experts: each one's step times (ms)
    switch_ms: tuple[float, ...] = ()  # two experts: each switch's wall time (ms)
    encode_ms: float = 0.0  # the text encoders' time for the prompt
    encoders_streamed: tuple[str, ...] = ()  # those streamed through the ring (no room whole)
    encode_device: str = ""  # where the encoders ran

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {
            "step_ms": list(self.step_ms), "switch_ms": list(self.switch_ms),
            "encoders_streamed": list(self.encoders_streamed),
            "expert_step_ms": {k: list(v) for k, v in (self.expert_step_ms or {}).items()} or None,
        }


def quiet_hf_libraries() -> None:
    """diffusers' and transformers' own stderr handlers and progress bars off: their records
    propagate to the root logger like any library's (the CLI keeps them in its debug log)."""
    import importlib

    for name in ("diffusers", "transformers"):
        try:
            logs = importlib.import_module(f"{name}.utils.logging")
        except ImportError:
            continue
        logs.disable_default_handler()
        logs.enable_propagation()
        logs.disable_progress_bar()


def load_pipeline(adapter, weights: Path, transformer_file: Path | None, dtype,
                  transformer_2_file: Path | None = None):
    """The family's pipeline from a local folder, its transformer (and a second expert's)
    optionally from one single file each."""
    import torch  # noqa: F401

    quiet_hf_libraries()
    os.environ["HF_HUB_OFFLINE"] = "1"
    weights = Path(weights)
    if not (weights / "model_index.json").is_file():
        raise UserError(
            f"weights folder {weights} has no model_index.json: give a local diffusers "
            f"{adapter.pipeline_class().__name__} folder (save_pretrained or a downloaded snapshot)"
        )
    pipeline_class = _pipeline_class(adapter, weights)
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
            drop_fp32_kept(getattr(pipe, name, None), dtype)
    return pipe


def _pipeline_class(adapter, weights: Path):
    """The family's pipeline class, or the image-conditioned variant the folder was saved as
    (`FamilyAdapter.variant_pipelines`: Wan's image-to-video)."""
    import diffusers

    name = pipeline_class_name(weights)
    if name in adapter.variant_pipelines:
        return getattr(diffusers, name)
    return adapter.pipeline_class()


def _transformer_from_file(adapter, weights: Path, path: Path, subfolder: str | None = None):
    """Build the transformer from the folder's config (its `subfolder`, default the family's
    denoiser) and load one file's tensors as they are stored (an fp8 checkpoint stays fp8), in
    diffusers or the family's original naming."""
    from runtime.checkpoint.load import load_transformer

    config = adapter.model_class().load_config(weights, subfolder=subfolder or adapter.denoiser)
    return load_transformer(path, config, family=adapter.name)


def _prompt_kwargs(adapter, pipe, prompt: str, workload, guidance: float, device,
                   room: int) -> tuple[dict, "EncodeReport"]:
    """Run the text encoders, then drop them. Within `room` (the plan's budget: they run before
    the denoiser is applied) they run on the device whole; the largest that do not fit are streamed
    through a ring (`runtime.encoders`); only an encoder that can be neither (no repeated
    blocks, fp16 with fp32-kept parts) sends them all to the CPU, as before."""
    import time

    import torch

    from runtime.engine.device import synchronize

    named = [(name, getattr(pipe, name, None)) for name in adapter.text_encoders]
    named = [(name, enc) for name, enc in named if enc is not None]
    if device.type == "cuda":
        room = min(room, int(torch.cuda.mem_get_info(device)[0] * 0.9))
    placed, streamed, target = _place_encoders(named, device, room)
    try:
        synchronize(target)
        start = time.perf_counter()
        with torch.no_grad():
            kwargs = adapter.prompt_kwargs(pipe, prompt, workload, guidance, target)
        synchronize(target)
        encode_ms = (time.perf_counter() - start) * 1000.0
    finally:
        for handle in placed:
            handle.remove()
    for name in adapter.text_encoders:  # drop-and-reload: the next run loads them again
        if hasattr(pipe, name):  # a family's pipelines may lack one (SD 1.5 has one CLIP)
            setattr(pipe, name, None)
    del named, placed
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # tensors, and lists of them (Z-Image's pipeline takes one embedding per prompt), move
    kwargs = {k: torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.to(device), v)
              for k, v in kwargs.items()}
    return kwargs, EncodeReport(encode_ms, tuple(streamed), str(target))


@dataclasses.dataclass(frozen=True)
class EncodeReport:
    ms: float  # the encoders' wall time for the prompt (and a negative one)
    streamed: tuple[str, ...]  # encoders streamed through the ring
    device: str  # where they ran


def _place_encoders(named, device, room: int):
    """(handles to remove, names streamed, the device they run on): whole while the sum fits
    `room`, the largest streamed until it does; the CPU where one can be neither."""
    import torch

    from runtime.encoders import stream_encoder
    from runtime.phases import Whole

    whole = sorted(named, key=lambda ne: module_bytes(ne[1]))
    streamed = []
    while whole and sum(module_bytes(enc) for _, enc in whole) > room:
        streamed.append(whole.pop())
    placed = []
    try:
        for name, enc in streamed:
            placed.append(stream_encoder(enc, device, room))
    except UserError:  # cannot stream: the CPU, as before there was a ring for encoders
        for handle in placed:
            handle.remove()
        cpu = torch.device("cpu")
        return [Whole(enc, cpu) for _, enc in named], [], cpu
    placed += [Whole(enc, device) for _, enc in whole]
    return placed, [name for name, _ in streamed], device


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
    pipe.set_progress_bar_config(disable=True)
    load_loras(pipe, config.loras)
    phases = _PhasePeaks(device)
    # the prompt is encoded before the plan is applied: the text encoders are dropped before
    # any pack is built, so host RAM never holds both (planner.host_peak's phases), and they
    # have the plan's whole VRAM budget, the denoiser not being on the device yet
    kwargs, encoded = _prompt_kwargs(adapter, pipe, config.prompt, workload, config.guidance,
                                     device, plan.target.vram_budget_bytes)
    if config.guidance_2 is not None:
        kwargs.update(adapter.second_guidance_kwargs(pipe, config.guidance_2))
    phases.close("encode")
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
    phases.close("load")
    try:
        if config.image is not None:
            kwargs["image"] = conditioning_image(config.image)
        _others_to(pipe, adapter, device)  # the VAE, an image encoder
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
        handle.release()  # the denoiser leaves the device before the decode, whose peak
        # (a video VAE's above all) then has the memory the plan held; it is dropped, not
        # restored to host memory: this pipeline is thrown away after the run
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
        phase_peak_vram_bytes=phases.peaks or None, phase_peak_host_bytes=phases.host_peaks or None,
        expert_step_ms=by_expert[0], switch_ms=by_expert[1],
        encode_ms=encoded.ms, encoders_streamed=encoded.streamed, encode_device=encoded.device,
    )


def _recorder(pipe, adapter, path: Path | None):
    """Activation statistics hooks on the denoiser (`runtime.analysis.stats`), if asked."""
    from runtime.analysis.stats import record_stats

    if path is None:
        return None
    model = getattr(pipe, adapter.denoiser)
    return record_stats(model, adapter.blocks(model))
def conditioning_image(path: Path):
    """The image at `path` as RGB (a pipeline's conditioning image); one sentence otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise UserError(f"--image {path} is not an image file this tool reads ({e}): give a PNG or JPEG") from e


def _others_to(pipe, adapter, device) -> None:
    """Every module of the pipeline but its denoisers and text encoders onto `device`."""
    import torch

    skip = {adapter.denoiser, "transformer_2", *adapter.text_encoders}
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module) and name not in skip:
            module.to(device)


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
    """Peak device memory (CUDA only) and host RSS high-water of each phase of a run."""

    def __init__(self, device) -> None:
        import torch

        from runtime.host_rss import reset_peak

        self.device = device
        self.cuda = device.type == "cuda"
        self.peaks: dict[str, int] = {}
        self.host_peaks: dict[str, int] = {}
        self._reset_host = reset_peak()  # False: each phase reads the lifetime peak
        if self.cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)

    def close(self, phase: str) -> int | None:
        """The peak since the last phase closed, recorded under `phase`; the next one starts."""
        import torch

        from runtime.host_rss import peak_rss_bytes, reset_peak

        host = peak_rss_bytes()
        if host is not None:
            self.host_peaks[phase] = host
        if self._reset_host:
            reset_peak()
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
