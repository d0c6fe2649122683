"""`planner analyze --weights DIR --prompts FILE`: each block's output error when stored fp8,
Q8_0 or Q4_K, measured on real weights, stored for `tune --max-error`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from planner.cli._common import DbOption, JsonOption, echo, print_json, print_table


def analyze(
    weights: Annotated[Path, typer.Option("--weights", help="Local diffusers pipeline folder of the model.")],
    prompts: Annotated[Path, typer.Option("--prompts", help="Calibration prompts, one per line.")],
    model: Annotated[str, typer.Option("--model", help="Model id from `planner models list`.")],
    steps: Annotated[int, typer.Option(help="Denoising steps per prompt (each a calibration forward).")] = 4,
    height: Annotated[int, typer.Option(help="Image height.")] = 512,
    width: Annotated[int, typer.Option(help="Image width.")] = 512,
    seed: Annotated[int, typer.Option(help="Random seed of the first prompt (then +1 each).")] = 0,
    formats: Annotated[str, typer.Option(help="Comma-separated formats to measure.")] = "fp8,q8_0,q4_k",
    stats: Annotated[Optional[Path], typer.Option("--stats", help="Activation statistics from `planner apply --record-stats`: measure pruning too.")] = None,
    prune: Annotated[str, typer.Option("--prune", help="With --stats: comma-separated fractions of each MLP's least active units to remove, e.g. 0.25,0.5.")] = "",
    profile: Annotated[Optional[int], typer.Option("--profile", help="Store the table beside this profile id.")] = None,
    device: Annotated[Optional[str], typer.Option(help="Compute device (default: cuda if present).")] = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Measure, per block, the denoiser's relative output error when that block alone is stored
    in each format, averaged over every step of denoising the calibration prompts."""
    from planner.app.analyze import AnalyzeRequest, analyze as run, read_prompts
    from runtime.analysis.convert import check_format
    from runtime.dtypes import DType

    req = AnalyzeRequest(
        model_id=model, weights=weights, prompts=read_prompts(prompts), steps=steps,
        height=height, width=width, seed=seed, device=device, profile_id=profile, db_url=db,
        formats=tuple(check_format(DType.parse(f.strip())) for f in formats.split(",") if f.strip()),
        stats=stats, prune=_fractions(prune),
    )
    table, analysis_id = run(req)
    if json_out:
        print_json(table.to_dict() | {"analysis_id": analysis_id})
        return
    by_block = table.errors_by_block()
    kinds = {row.block: row.kind for row in table.rows}
    options = list(dict.fromkeys(row.option for row in table.rows))
    print_table(
        f"{model}: relative output error per block ({table.inputs} calibration forwards)",
        ["block", "kind", *(o.name for o in options)],
        [[name, kinds[name], *(f"{errors[o]:.2e}" if o in errors else "" for o in options)]
         for name, errors in by_block.items()],
    )
    echo(f"stored as block analysis {analysis_id}; `planner tune --max-error E` uses the newest")


def _fractions(text: str) -> tuple[float, ...]:
    from runtime.errors import UserError

    try:
        return tuple(float(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise UserError(f"--prune {text!r} is not a list of fractions: give e.g. 0.25,0.5") from None
