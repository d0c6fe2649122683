"""`planner apply --weights FOLDER --vram 8GB --prompt ...`: any diffusers pipeline folder,
planned from its own first step (`planner.app.any_pipeline`), its image written and each
denoiser's run recorded in the store."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from planner.cli._common import echo, print_json


@dataclasses.dataclass(frozen=True)
class AnyApplyOptions:
    weights: Path
    prompt: str
    vram: str
    host_ram: str | None
    image: Path | None
    steps: int | None
    seed: int
    guidance: float | None
    height: int | None
    width: int | None
    frames: int | None
    output: Path
    device: str | None
    db: str | None
    json_out: bool
    pipeline_arg: list[str] | None = None


def apply_any(o: AnyApplyOptions) -> None:
    from planner.app.any_pipeline import AnyRunConfig, run_any
    from planner.app.any_runs import record_component_runs
    from planner.budget import parse_size
    from planner.cli.apply_checks import check_apply_inputs
    from planner.cli.apply_preflight import check_components, model_index
    from runtime.components import check_image, takes_frames
    from runtime.files import atomic_path

    from db.store import open_store

    vram = parse_size(o.vram, "--vram")
    host_ram = parse_size(o.host_ram, "--host-ram") if o.host_ram is not None else None
    animated = o.frames > 1 if o.frames is not None else takes_frames(o.weights)
    suffixes = check_apply_inputs(  # every option and the image target, before any work
        weights=o.weights, transformer=None, output=o.output, steps=o.steps, seed=o.seed,
        guidance=o.guidance, height=o.height, width=o.width, frames=2 if animated else 1,
        denoiser=_first_denoiser(o.weights), pipeline="pipeline",
    )
    check_components(o.weights, model_index(o.weights), set())  # no custom code, no pickles
    check_image(o.weights, o.image)
    with open_store(o.db):  # a locked, read-only or out-of-date store fails here, before any work
        pass
    with atomic_path(o.output, "-o", suffixes, "image" + suffixes[0]) as tmp:
        result = run_any(AnyRunConfig(
            weights=o.weights, prompt=o.prompt, output=tmp, vram_bytes=vram,
            host_ram_bytes=host_ram, steps=o.steps, seed=o.seed, guidance=o.guidance,
            height=o.height, width=o.width, frames=o.frames, image=o.image, device=o.device,
            store_url=o.db, call_args=parse_call_args(o.pipeline_arg),
        ))
        result = dataclasses.replace(result, output=str(o.output))
    runs = record_component_runs(o.db, result)
    if o.json_out:
        print_json(result.to_dict() | {"runs": [dataclasses.asdict(r) for r in runs]})
        return
    _print(result, runs)


def parse_call_args(texts: list[str] | None) -> tuple[tuple[str, object], ...]:
    """`NAME=VALUE` texts as (name, value): the value a JSON number, boolean or null where it
    reads as one, else the text."""
    from runtime.errors import UserError

    parsed = []
    for text in texts or ():
        name, sep, value = text.partition("=")
        if not sep or not name.strip().isidentifier():
            raise UserError(f"--pipeline-arg {text!r} is not NAME=VALUE: write e.g. max_area=1048576")
        try:
            decoded = json.loads(value)
            if isinstance(decoded, (list, dict)):
                decoded = value
        except ValueError:
            decoded = value
        parsed.append((name.strip(), decoded))
    return tuple(parsed)


def _first_denoiser(weights: Path) -> str:
    from runtime.folder_blocks import components_of

    found = [c[0] for c in components_of(weights) if c[3] == "denoiser"] \
        if (Path(weights) / "model_index.json").is_file() else []
    return found[0] if found else "transformer"


def _print(result, runs) -> None:
    from planner.budget import format_size

    def peak(n):
        return format_size(n) if n is not None else "not measured on CPU"

    echo(f"wrote {result.output}")
    echo(f"{result.pipeline}: {result.seconds_per_step:.3f} s/step over {result.steps} steps on {result.device}")
    echo(f"encode: {result.encode_ms / 1000:.3f} s, peak VRAM {peak(result.encode_peak_vram_bytes)}")
    for c in result.components:
        how = "whole on the device" if c.placement == "whole" else \
            f"{c.streamed_blocks} blocks streamed ({c.source})"
        echo(f"  {c.name} ({c.role}): {how}; {len(c.forward_ms)} forwards, "
             f"{c.total_ms / 1000:.3f} s; peak VRAM {peak(c.peak_vram_bytes)}")
    for r in runs:
        echo(r.note)
