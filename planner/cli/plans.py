"""`planner plans list | show | best | export | import | rm | schema`: the stored plans."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from planner.cli._common import DbOption, JsonOption, print_json, print_table

app = typer.Typer(no_args_is_help=True)

PlanId = Annotated[int, typer.Argument(help="Plan id from `planner plans list`.", min=1)]
ModelOption = Annotated[Optional[str], typer.Option("--model", help="Model id, e.g. flux-dev.")]
GpuOption = Annotated[Optional[str], typer.Option("--gpu", help="GPU name, e.g. 'rtx 4060'.")]
ResolutionOption = Annotated[Optional[str], typer.Option("--resolution", help="WIDTHxHEIGHT.")]


@app.command("schema")
def schema() -> None:
    """Print the JSON Schema of the plan file format."""
    from runtime.plan_schema import plan_schema

    print_json(plan_schema())


@app.command("list")
def list_plans(
    model: ModelOption = None,
    gpu: GpuOption = None,
    max_vram: Annotated[Optional[str], typer.Option("--max-vram", help="Largest budget, e.g. 8GB.")] = None,
    resolution: ResolutionOption = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Stored plans, filtered by model, GPU, budget and resolution."""
    from db.store import open_store
    from planner.budget import parse_size
    from runtime.workload import parse_resolution

    limit = parse_size(max_vram, "--max-vram") if max_vram is not None else None
    size = parse_resolution(resolution) if resolution is not None else None
    with open_store(db) as store:
        plans = store.list_plans(model=model, gpu=gpu, max_vram=limit, resolution=size)
    if json_out:
        print_json([_summary(p) for p in plans])
        return
    print_table(None, _COLUMNS, [_row(p) for p in plans])


@app.command("show")
def show(plan_id: PlanId, db: DbOption = None, json_out: JsonOption = False) -> None:
    """One stored plan: target, predictions, measured runs and every block's placement."""
    from db.store import open_store

    with open_store(db) as store:
        stored = store.get_plan(plan_id)
    _print_plan(stored, json_out)


@app.command("best")
def best(
    model: Annotated[str, typer.Option("--model", help="Model id, e.g. flux-dev.")],
    vram: Annotated[str, typer.Option("--vram", help="VRAM to fit, e.g. 8GB.")],
    gpu: GpuOption = None,
    resolution: ResolutionOption = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """The fastest stored plan that fits VRAM: measured time first, else predicted."""
    from db.store import open_store
    from planner.budget import format_size, parse_size
    from runtime.errors import UserError
    from runtime.workload import parse_resolution

    vram_bytes = parse_size(vram, "--vram")
    if resolution is not None:
        parse_resolution(resolution)
    with open_store(db) as store:
        stored = store.best_plan(model, vram_bytes, gpu=gpu, resolution=resolution)
    if stored is None:
        on = f" on {gpu}" if gpu else ""
        raise UserError(
            f"no stored plan for {model}{on} fits {format_size(vram_bytes)}: "
            f"make one with `planner tune --model {model} --vram {vram}`"
        )
    _print_plan(stored, json_out)


@app.command("export")
def export(
    plan_id: PlanId,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write here, not stdout.")] = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Write a stored plan as a plan.json file (stdout without -o)."""
    from db.store import open_store
    from runtime.plan import dumps_plan, save_plan

    with open_store(db) as store:
        stored = store.get_plan(plan_id)
    if output is None:
        typer.echo(dumps_plan(stored.plan), nl=False)
        return
    _write_plan(stored.plan, output, save_plan)
    if json_out:
        print_json({"id": plan_id, "path": str(output)})
    else:
        typer.echo(f"plan {plan_id} written to {output}")


@app.command("import")
def import_plan(
    path: Annotated[Path, typer.Argument(help="A plan.json file.")],
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Store a plan file (validated field by field); importing it again keeps one copy."""
    from db.store import open_store
    from runtime.plan import load_plan

    plan = load_plan(path)
    with open_store(db) as store:
        existed = store.find_plan(plan)
        plan_id = existed if existed is not None else store.save_plan(plan)
    if json_out:
        print_json({"id": plan_id, "created": existed is None})
    elif existed is None:
        typer.echo(f"imported {path} as plan {plan_id}")
    else:
        typer.echo(f"{path} is already stored as plan {plan_id}")


@app.command("rm")
def remove(plan_id: PlanId, db: DbOption = None, json_out: JsonOption = False) -> None:
    """Remove a stored plan and its measured runs."""
    from db.store import open_store

    with open_store(db) as store:
        store.remove_plan(plan_id)
    if json_out:
        print_json({"id": plan_id, "removed": True})
    else:
        typer.echo(f"removed plan {plan_id}")


# ------------------------------------------------------------ output

_COLUMNS = ["id", "model", "gpu", "budget", "resolution", "streamed", "depth", "predicted ms",
            "best measured ms", "runs", "created"]


def _summary(stored) -> dict:
    p = stored.plan
    return {
        "id": stored.id,
        "model": p.model.id,
        "gpu_name": p.target.gpu_name,
        "vram_budget_bytes": p.target.vram_budget_bytes,
        "resolution": p.workload.resolution,
        "streamed_blocks": len(p.streamed),
        "blocks": len(p.blocks),
        "prefetch_depth": p.prefetch_depth,
        "predicted_step_ms": p.predictions.step_ms,
        "best_measured_ms": stored.best_measured_ms,
        "runs": stored.runs,
        "created": stored.created.isoformat(),
    }


def _row(stored) -> list:
    from planner.budget import format_size

    s = _summary(stored)
    measured = "-" if s["best_measured_ms"] is None else round(s["best_measured_ms"], 1)
    return [
        s["id"], s["model"], s["gpu_name"], format_size(s["vram_budget_bytes"]), s["resolution"],
        f"{s['streamed_blocks']}/{s['blocks']}", s["prefetch_depth"], round(s["predicted_step_ms"], 1),
        measured, s["runs"], s["created"][:19],
    ]


def _print_plan(stored, json_out: bool) -> None:
    from planner.budget import format_size
    from runtime.plan import plan_to_dict

    if json_out:
        print_json({**_summary(stored), "plan": plan_to_dict(stored.plan)})
        return
    print_table(f"plan {stored.id}", _COLUMNS, [_row(stored)])
    rows = [[i, b.name, b.kind, b.bytes, format_size(b.bytes), b.placement.value, b.cast.value]
            for i, b in enumerate(stored.plan.blocks)]
    print_table(None, ["#", "block", "kind", "bytes", "size", "placement", "cast"], rows)


def _write_plan(plan, output: Path, save_plan) -> None:
    from runtime.errors import UserError

    try:
        save_plan(plan, output)
    except OSError as e:
        raise UserError(f"cannot write {output} ({e.strerror}): choose a writable path with -o") from e
