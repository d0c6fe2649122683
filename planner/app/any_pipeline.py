"""Generate with any local diffusers pipeline folder under first-step-measured offloading.

`run_any(config)` loads the folder's own pipeline class (`runtime.components`), keeps the
small components (VAE, image encoder) on the device for the run, and gives the device to one
heavy component at a time (`runtime.phases`): each text encoder whole where it fits beside
the budget, else streamed through the ring (`runtime.encoders`, every block at depth 1: it
runs once or twice, nothing to tune); each denoiser
(a transformer, a UNet, Wan 2.2's two experts, a cascade's prior and decoder) under
`apply_auto` within the same budget at its phase. The pipeline is called as its users call
it (prompt, steps, size, a conditioning image where it takes one), so image-conditioned and
edit variants run with their own inputs, and the token counts those inputs make are in the
first step's measured profile (`apply_auto` keys profiles and plans by input shapes).
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

from planner.app.auto import apply_auto
from planner.budget import format_size
from runtime.engine.device import resolve_device
from runtime.components import check_image, load_any_pipeline, module_bytes, roles_of
from runtime.encoders import stream_encoder
from runtime.errors import UserError
from runtime.generate import conditioning_image, save_frames
from runtime.phases import Phases, Whole, execution_device

ENCODER = "text encoder"
DENOISER = "denoiser"


@dataclasses.dataclass(frozen=True)
class AnyRunConfig:
    weights: Path  # a local diffusers pipeline folder, any class
    prompt: str
    output: Path
    vram_bytes: int
    host_ram_bytes: int | None = None
    steps: int | None = None  # None: the pipeline's default
    seed: int = 0
    guidance: float | None = None  # None: the pipeline's default
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    image: Path | None = None  # conditioning image (image-to-video, edit, Kontext)
    device: str | None = None
    store_url: str | None = None
    output_type: str = "pil"  # "latent": one step of the denoisers only (profiling)
    # further arguments of the pipeline's own call (Kontext's max_area, Sana's
    # use_resolution_binning, ...), by name, as (name, value) pairs
    call_args: tuple[tuple[str, object], ...] = ()


@dataclasses.dataclass(frozen=True)
class ComponentRun:
    """One heavy component's phase: how it was placed and what it measured."""

    name: str
    role: str  # DENOISER or ENCODER
    placement: str  # "whole", "streamed" (apply_auto)
    forward_ms: tuple[float, ...]
    peak_vram_bytes: int | None  # CUDA only
    plan: object | None = None  # the apply_auto plan in force at the end of its phase
    profile: object | None = None  # the apply_auto profile it was tuned from (stored)
    source: str = ""  # apply_auto's: "stream-all", "measured", "stored plan", "stored profile"
    streamed_blocks: int = 0
    device_weight_bytes: int = 0

    @property
    def total_ms(self) -> float:
        return sum(self.forward_ms)


@dataclasses.dataclass(frozen=True)
class AnyRunResult:
    output: str
    device: str
    pipeline: str
    steps: int
    seconds_per_step: float  # the denoisers' forwards, all of them, per step
    encode_ms: float  # the text encoders' forwards
    encode_peak_vram_bytes: int | None
    peak_vram_bytes: int | None  # the highest phase peak (CUDA only)
    components: tuple[ComponentRun, ...]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for c, run in zip(data["components"], self.components):
            c["forward_ms"] = list(c["forward_ms"])
            c["plan"] = None if run.plan is None else run.plan.model.id
            c["profile"] = None if run.profile is None else run.profile.id
        return data


def run_any(config: AnyRunConfig) -> AnyRunResult:
    """See the module docstring."""
    check_image(config.weights, config.image)
    device = resolve_device(config.device)
    dtype = _dtype(device)
    pipe = load_any_pipeline(config.weights, dtype)
    roles = roles_of(pipe)
    rest_bytes = sum(module_bytes(getattr(pipe, n)) for n in roles.rest)
    budget = config.vram_bytes - rest_bytes
    if budget <= 0:
        raise UserError(
            f"--vram {format_size(config.vram_bytes)} does not hold {type(pipe).__name__}'s "
            f"{', '.join(roles.rest)} ({format_size(rest_bytes)}), which stay on the device "
            f"for the run: give a larger --vram"
        )
    rest = [Whole(getattr(pipe, name), device) for name in roles.rest]

    def place(name: str, module):
        if name in roles.encoders:  # run once or twice a prompt: nothing to tune
            return Whole(module, device) if module_bytes(module) <= budget else \
                stream_encoder(module, device, budget)
        return apply_auto(module, vram=budget, host_ram=config.host_ram_bytes, device=device,
                          store=config.store_url)

    phases = Phases(pipe, device, place, describe=_describe)
    phases.install(roles.encoders + roles.denoisers)
    try:
        with execution_device(pipe, device):
            output = pipe(**_call_kwargs(pipe, config))
    finally:
        phases.remove()
        for whole in rest:
            whole.remove()
    steps = _steps(pipe, config)
    if config.output_type != "latent":
        Path(config.output).parent.mkdir(parents=True, exist_ok=True)
        save_frames(_frames(output), Path(config.output))
    return _result(config, device, pipe, roles, phases, steps)


def _dtype(device):
    """bf16 on a GPU (what the released weights are); the stored dtype on the CPU (tests)."""
    import torch

    return torch.bfloat16 if device.type == "cuda" else None


def _describe(handle) -> dict:
    """What to keep of a placement before its phase ends and it is removed."""
    if isinstance(handle, Whole):
        return {"placement": "whole"}
    stats = handle.stats
    if not hasattr(handle, "source"):  # an encoder streamed at depth 1 (runtime.encoders)
        return {"placement": "streamed", "source": "every block at depth 1",
                "streamed_blocks": stats.streamed_blocks,
                "device_weight_bytes": stats.device_weight_bytes}
    plan = handle.plan
    if handle.model_id and plan.model.id != handle.model_id:  # the stream-everything plan stayed:
        plan = dataclasses.replace(plan, model=dataclasses.replace(plan.model, id=handle.model_id))
    return {
        "placement": "streamed", "plan": plan, "source": handle.source,
        "profile": handle.profile,
        "streamed_blocks": stats.streamed_blocks, "device_weight_bytes": stats.device_weight_bytes,
    }


def _call_kwargs(pipe, config: AnyRunConfig) -> dict:
    """The pipeline's own call arguments for this run: only those its `__call__` takes."""
    import torch

    accepted = inspect.signature(type(pipe).__call__).parameters
    wanted = {
        "prompt": config.prompt,
        "num_inference_steps": config.steps,
        "guidance_scale": config.guidance,
        "height": config.height,
        "width": config.width,
        "num_frames": config.frames,
        "generator": torch.Generator("cpu").manual_seed(config.seed),
        "output_type": config.output_type,
        "image": conditioning_image(config.image) if config.image is not None else None,
    }
    for name, value in config.call_args:
        if name not in accepted or name in wanted or name in ("self", "return_dict"):
            raise UserError(
                f"--pipeline-arg {name} is not an argument {type(pipe).__name__} takes beside "
                f"the options this command sets: see its documentation for the names it takes"
            )
    return {k: v for k, v in wanted.items() if v is not None and k in accepted} | dict(config.call_args)


def _steps(pipe, config: AnyRunConfig) -> int:
    if config.steps is not None:
        return config.steps
    default = inspect.signature(type(pipe).__call__).parameters.get("num_inference_steps")
    return default.default if default is not None and isinstance(default.default, int) else 1


def _frames(output) -> list:
    """The PIL images of a pipeline output: its images, or the first video's frames."""
    from PIL import Image

    frames = getattr(output, "images", None)
    if frames is None:
        frames = getattr(output, "frames", None)
        frames = frames[0] if frames is not None else None
    if frames is None:
        raise UserError(f"{type(output).__name__} holds no images nor frames to write")
    return [f if isinstance(f, Image.Image) else Image.fromarray(_uint8(f)) for f in frames]


def _uint8(array):
    import numpy as np

    array = np.asarray(array)
    return array if array.dtype == np.uint8 else (np.clip(array, 0, 1) * 255).round().astype(np.uint8)


def _result(config, device, pipe, roles, phases: Phases, steps: int) -> AnyRunResult:
    runs = []
    for name in dict.fromkeys(phases.order):
        described = phases.described.get(name) or {"placement": "whole"}
        runs.append(ComponentRun(
            name=name, role=ENCODER if name in roles.encoders else DENOISER,
            forward_ms=tuple(phases.forward_ms.get(name, ())),
            peak_vram_bytes=phases.peak_bytes.get(name), **described,
        ))
    denoise_ms = sum(r.total_ms for r in runs if r.role == DENOISER)
    encoders = [r for r in runs if r.role == ENCODER]
    peaks = [r.peak_vram_bytes for r in runs if r.peak_vram_bytes is not None]
    return AnyRunResult(
        output=str(config.output), device=str(device), pipeline=type(pipe).__name__, steps=steps,
        seconds_per_step=denoise_ms / steps / 1000.0 if steps else 0.0,
        encode_ms=sum(r.total_ms for r in encoders),
        encode_peak_vram_bytes=max((r.peak_vram_bytes for r in encoders if r.peak_vram_bytes), default=None),
        peak_vram_bytes=max(peaks) if peaks else None,
        components=tuple(runs),
    )
