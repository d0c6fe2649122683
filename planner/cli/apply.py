"""`planner apply PLAN --weights DIR --prompt ...`: generate one image under a plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from planner.cli._common import DbOption, JsonOption, print_json


def apply(
    plan_file: Annotated[Optional[Path], typer.Argument(help="plan.json from `planner tune`; leave it out and give --vram to plan any pipeline folder from its first step.")] = None,
    weights: Annotated[Path, typer.Option("--weights", help="Local diffusers pipeline folder of the plan's model (with --vram: of any pipeline class).")] = ...,
    prompt: Annotated[str, typer.Option("--prompt", help="Text prompt.")] = ...,
    vram: Annotated[Optional[str], typer.Option("--vram", help="Without a plan: the VRAM budget, e.g. 8GB; the first step is measured and the plan tuned from it.")] = None,
    host_ram: Annotated[Optional[str], typer.Option("--host-ram", help="With --vram: host RAM the plan may pin, e.g. 32GB.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="The conditioning image of an image-to-video or edit pipeline (its folder's own class).")] = None,
    pipeline_arg: Annotated[Optional[list[str]], typer.Option("--pipeline-arg", help="With --vram: a further argument of the pipeline's own call, NAME=VALUE (e.g. max_area=1048576); repeatable.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Denoising steps (default: the model's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    guidance: Annotated[Optional[float], typer.Option(help="Guidance scale (default: the model's).")] = None,
    guidance_2: Annotated[Optional[float], typer.Option("--guidance-2", help="Guidance of the second expert's steps (Wan 2.2 A14B; default: the model's, 3.0).")] = None,
    height: Annotated[Optional[int], typer.Option(help="Image height (default: the plan's).")] = None,
    width: Annotated[Optional[int], typer.Option(help="Image width (default: the plan's).")] = None,
    frames: Annotated[Optional[int], typer.Option(help="Video frames (default: the plan's).")] = None,
    transformer: Annotated[Optional[Path], typer.Option("--transformer", help="Single-file transformer: .safetensors (diffusers or original BFL/ComfyUI names; fp8 kept), .gguf, or a bitsandbytes NF4 .safetensors (kept packed).")] = None,
    transformer_2: Annotated[Optional[Path], typer.Option("--transformer-2", help="The second expert's single file (Wan 2.2 A14B's low-noise transformer), as --transformer.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Image file to write; a video's frames go into an animated .webp or .gif.")] = Path("image.png"),
    device: Annotated[Optional[str], typer.Option(help="Compute device (default: cuda if present).")] = None,
    lora: Annotated[Optional[list[str]], typer.Option("--lora", help="LoRA file to load, FILE or FILE:SCALE; repeatable.")] = None,
    record_stats: Annotated[Optional[Path], typer.Option("--record-stats", help="Add this run's activation statistics (how often each MLP hidden unit is active, each block's residual update) to this .safetensors file.")] = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Generate an image with a plan applied, and measure it against the plan."""
    if plan_file is None or vram is not None:
        return _apply_any(plan_file, locals())
    from runtime.errors import UserError

    for option, given in (("--host-ram", host_ram), ("--pipeline-arg", pipeline_arg)):
        if given is not None:
            raise UserError(f"{option} is for planning from the first step: give --vram instead of a plan, or drop {option}")
    from planner.budget import format_size
    from planner.cli._common import echo
    from planner.cli.apply_checks import check_apply_inputs
    from planner.cli.apply_preflight import ApplyFiles, preflight
    from planner.app.runs import record_measured_run
    from runtime.catalog import find_model
    from runtime.components import check_image
    from runtime.files import atomic_path
    from runtime.generate import GenerateConfig, generate
    from runtime.plan import load_plan

    from db.store import open_store

    from runtime.lora import parse_lora

    loras = tuple(parse_lora(text) for text in lora or ())
    plan = load_plan(plan_file)
    spec = find_model(plan.model.id)
    suffixes = check_apply_inputs(  # every option and the image target, before any work
        weights=weights, transformer=transformer, output=output, steps=steps, seed=seed,
        guidance=guidance, height=height, width=width,
        frames=frames if frames is not None else plan.workload.frames,
        denoiser=_denoiser(plan.model.family), guidance_2=guidance_2,
        experts=spec is not None and spec.experts is not None, transformer_2=transformer_2,
        pipeline=_pipeline_name(plan.model.family),
    )
    check_image(weights, image)  # an image-to-video folder takes one, others none
    preflight(plan, ApplyFiles(plan_file, weights, transformer, transformer_2, loras, height, width, frames))
    if record_stats is not None:
        from runtime.files import check_target

        from runtime.analysis.stats import load_stats

        check_target(record_stats, "--record-stats", (".safetensors",), "stats.safetensors")
        if record_stats.exists():
            load_stats(record_stats)  # a file runs are added to: refused now, not after the run
    with open_store(db):  # a locked, read-only or out-of-date store fails here, before any work
        pass
    steps = steps if steps is not None else (spec.default_steps if spec else 28)
    with atomic_path(output, "-o", suffixes, "image" + suffixes[0]) as tmp:  # the image appears whole, or not at all
        config = GenerateConfig(
            weights=weights, prompt=prompt, output=tmp,
            steps=steps, seed=seed,
            guidance=guidance if guidance is not None else (spec.default_guidance if spec else 3.5),
            guidance_2=_second_guidance(spec, guidance_2),
            height=height, width=width, frames=frames, transformer_file=transformer,
            transformer_2_file=transformer_2, device=device,
            loras=loras, image=image, record_stats=record_stats,
        )
        result = dataclasses.replace(generate(plan, config), output=str(output))
    run = record_measured_run(db, plan, result, steps=steps, height=height, width=width,
                              frames=frames)
    if not run.comparable:  # the plan's bound is for its target GPU and workload, not this run
        result = dataclasses.replace(result, ratio_to_lower_bound=None)
    if json_out:
        print_json(result.to_dict() | {"run_id": run.run_id, "plan_id": run.plan_id,
                                       "run_ranks_plan": run.comparable, "gpu_name": run.gpu_name})
        return
    peak = format_size(result.peak_vram_bytes) if result.peak_vram_bytes is not None \
        else "not measured on CPU"
    ratio = f"{result.ratio_to_lower_bound:.2f}x" if result.ratio_to_lower_bound is not None \
        else "not compared (the bound is for the plan's own workload on its target GPU)" \
        if not run.comparable else "n/a (plan has no lower bound)"
    echo(f"wrote {result.output}")
    echo(f"{result.seconds_per_step:.3f} s/step over {result.steps} steps on {result.device}")
    echo(f"peak VRAM {peak} (plan predicted {format_size(result.predicted_peak_vram_bytes)})")
    encode_peak = (result.phase_peak_vram_bytes or {}).get("encode")
    echo(f"encode: {result.encode_ms / 1000:.3f} s on {result.encode_device}"
         + (f", {', '.join(result.encoders_streamed)} streamed through the ring"
            if result.encoders_streamed else "")
         + (f", peak VRAM {format_size(encode_peak)}" if encode_peak is not None else ""))
    if result.phase_peak_vram_bytes:
        echo("peak VRAM by phase: " + ", ".join(
            f"{phase} {format_size(n)}" for phase, n in result.phase_peak_vram_bytes.items()))
    if result.phase_peak_host_bytes:
        echo("peak host RAM by phase (RSS): " + ", ".join(
            f"{phase} {format_size(n)}" for phase, n in result.phase_peak_host_bytes.items()))
    if result.expert_step_ms:
        echo("experts: " + ", then ".join(
            f"{expert} {sum(ms) / len(ms) / 1000:.3f} s/step" if ms else f"{expert} (no whole step timed)"
            for expert, ms in result.expert_step_ms.items())
            + "".join(f"; switch {ms / 1000:.2f} s" for ms in result.switch_ms))
    if result.adapter_bytes:
        echo(f"LoRA weights placed with their blocks: {format_size(result.adapter_bytes)}")
    echo(f"ratio to the plan's lower bound ({result.lower_bound_ms:.1f} ms/step): {ratio}")
    echo(run.note)


def _apply_any(plan_file, given: dict) -> None:
    """No plan, a --vram budget: any pipeline folder, planned from its first step."""
    from planner.cli.apply_any import AnyApplyOptions, apply_any
    from runtime.errors import UserError

    if plan_file is not None:
        raise UserError(f"give a plan ({plan_file}) or --vram, not both: a plan sets its own budget")
    if given["vram"] is None:
        raise UserError("give a plan.json from `planner tune`, or --vram 8GB to plan this pipeline from its first step")
    for option in ("transformer", "transformer_2", "guidance_2", "lora"):
        if given[option]:
            raise UserError(f"--{option.replace('_', '-')} needs a plan: leave it out with --vram")
    names = {f.name for f in dataclasses.fields(AnyApplyOptions)}
    apply_any(AnyApplyOptions(**{k: v for k, v in given.items() if k in names}))


def _second_guidance(spec, given: float | None) -> float | None:
    """--guidance-2, else the released sampling's for a model with experts; None otherwise."""
    if given is not None:
        return given
    experts = spec.experts if spec is not None else None
    return experts.guidance_2 if experts is not None else None


def _denoiser(family: str) -> str:
    """The pipeline subfolder of the plan's model ("transformer", "unet")."""
    return getattr(_adapter(family), "denoiser", "transformer")


def _pipeline_name(family: str) -> str:
    """The diffusers pipeline class the plan's model loads with, for messages."""
    return getattr(_adapter(family), "diffusers_pipeline", "pipeline")


def _adapter(family: str):
    from runtime.errors import UserError
    from runtime.families import get_family

    try:
        return get_family(family)
    except UserError:
        return None  # an unknown family: apply's model checks say so with the fix
