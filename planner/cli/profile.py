"""`planner profile`: measure this machine's device and a model's blocks, store the profile.

A stored profile of the same machine, model, workload, dtype and tool version is reused unless
`--fresh`. Progress goes to stderr, so `--json` output on stdout stays clean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from planner.cli._common import DbOption, JsonOption, print_json, print_table


def profile(
    model: Annotated[Optional[str], typer.Option("--model", help="Model id from `planner models list`.")] = None,
    weights: Annotated[Optional[Path], typer.Option("--weights", help="A diffusers pipeline folder of any class: one real step of it is measured (instead of --model).")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", help="With --weights: the conditioning image of an image-to-video or edit pipeline.")] = None,
    pipeline_arg: Annotated[Optional[list[str]], typer.Option("--pipeline-arg", help="With --weights: a further argument of the pipeline's own call, NAME=VALUE; repeatable.")] = None,
    resolution: Annotated[Optional[str], typer.Option(help="Image size WIDTHxHEIGHT (default: the model's).")] = None,
    batch: Annotated[int, typer.Option(help="Images per prompt.")] = 1,
    frames: Annotated[Optional[int], typer.Option(help="Video frames (default: the model's; 1 for images).")] = None,
    dtype: Annotated[str, typer.Option(help="Storage dtype (bf16, fp8, ...); default: the model's.")] = "",
    device: Annotated[str, typer.Option(help="cuda:N or cpu; default: cuda:0 if present, else cpu.")] = "",
    fresh: Annotated[bool, typer.Option("--fresh", help="Measure again even if a profile is stored.")] = False,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Measure this machine's GPU and a model's blocks."""
    if (model is None) == (weights is None):
        from runtime.errors import UserError

        raise UserError("give --model ID (a catalog model) or --weights FOLDER (any pipeline folder), one of them")
    if weights is not None:
        if fresh:
            from runtime.errors import UserError

            raise UserError(
                "--fresh works with --model; a --weights folder's stored profile is kept until "
                "its model or its first step's input shapes change: drop --fresh"
            )
        return _profile_folder(weights, image, resolution, frames, device, db, json_out, pipeline_arg)
    from planner.app.stored import stored_or_measured
    from runtime.catalog import get_model
    from runtime.dtypes import DType

    spec = get_model(model)
    workload = spec.workload(resolution, batch, frames)
    storage = DType.parse(dtype) if dtype else spec.storage_dtype
    device = device or _default_device()
    with _ProgressBar(not json_out) as progress:
        result, reused = stored_or_measured(
            spec.id, workload, storage, device, db, fresh=fresh, progress=progress
        )
    _print(result, reused, json_out)


def _profile_folder(weights, image, resolution, frames, device, db, json_out, pipeline_arg) -> None:
    """One real step of any pipeline folder; each denoiser's measured profile printed."""
    import dataclasses

    from planner.app.any_profile import profile_folder
    from planner.cli.apply_any import parse_call_args
    from runtime.workload import parse_resolution

    width, height = parse_resolution(resolution) if resolution else (None, None)
    found = profile_folder(weights, device=device or None, store_url=db, height=height,
                           width=width, frames=frames, image=image,
                           call_args=parse_call_args(pipeline_arg))
    if json_out:
        print_json([{**dataclasses.asdict(f.profile), "component": f.component,
                     "summary": summary(f.profile, f.reused)} for f in found])
        return
    for f in found:
        _print(f.profile, f.reused, json_out)


def _default_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


class _ProgressBar:
    """A rich progress bar on stderr fed by profile_model's progress(stage, done, total)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), transient=True,
        )
        self.bar.__enter__()
        return self.update

    def update(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(f"measuring {stage}", total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def summary(p, reused: bool) -> dict:
    """The figures a user reads first, with units in the keys."""
    kinds: dict[str, list[float]] = {}
    for b in p.blocks:
        kinds.setdefault(b.kind, []).append(b.compute_ms)
    return {
        "id": p.id,
        "reused": reused,
        "device": p.device,
        "gpu": p.machine.gpu_name,
        "pinned_gbps": round(p.bandwidth.pinned_gbps, 2),
        "pageable_gbps": round(p.bandwidth.pageable_gbps, 2),
        "pinned_under_compute_gbps": round(p.bandwidth.pinned_under_compute_gbps, 2),
        "copy_overhead_us": round(p.bandwidth.copy_overhead_us, 2),
        "ms_per_block": {k: round(sum(v) / len(v), 3) for k, v in kinds.items()},
        "compute_ms_per_step": round(p.compute_ms * p.workload.forwards_per_step, 3),
        "activation_peak_bytes": p.activation_peak_bytes,
        "source": p.source,
    }


def _print(p, reused: bool, json_out: bool) -> None:
    import dataclasses

    from planner.budget import format_size

    facts = summary(p, reused)
    if json_out:
        print_json({**dataclasses.asdict(p), "summary": facts})
        return
    rows = [
        ["profile", f"#{p.id}" + ((" (stored, reused)" if p.model_id.startswith("auto:") else
                                   " (stored, reused; --fresh to measure again)") if reused else "")],
        ["device", f"{facts['gpu']} ({p.device})"],
        ["workload", f"{p.model_id} (the first step's input shapes, in the id) {p.storage_dtype.value}"
         if p.model_id.startswith("auto:") else
         f"{p.model_id} {p.workload.resolution}{_frames(p.workload)} batch {p.workload.batch} {p.storage_dtype.value}"],
        ["pinned / pageable", f"{facts['pinned_gbps']} / {facts['pageable_gbps']} GB/s"],
        ["pinned under compute", f"{facts['pinned_under_compute_gbps']} GB/s"],
        ["copy overhead", f"{facts['copy_overhead_us']} us"],
    ]
    rows += [[f"{kind} block", f"{ms} ms/block"] for kind, ms in facts["ms_per_block"].items()]
    rows += [
        ["compute per step", f"{facts['compute_ms_per_step']} ms"],
        ["activation peak", format_size(facts["activation_peak_bytes"])],
        ["source", p.source],
    ]
    print_table(None, ["measure", "value"], rows)


def _frames(workload) -> str:
    return f" x {workload.frames} frames" if workload.frames > 1 else ""
