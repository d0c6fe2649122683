"""`planner plans list | show | best | export | import | rm | schema`: the stored plans."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from planner.cli._common import DbOption, check_output, JsonOption, echo, print_json, print_table

app = typer.Typer(no_args_is_help=True)

MAX_ID = 2**63 - 1  # the store's ids are signed 64-bit integers
PlanId = Annotated[int, typer.Argument(help="Plan id from `planner plans list`.", min=1, max=MAX_ID)]
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
    dtype: Annotated[str, typer.Option("--dtype", help="Only plans storing this dtype.")] = "",
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Stored plans, filtered by model, GPU, budget, resolution and dtype."""
    from db.store import open_store
    from planner.budget import parse_size
    from runtime.dtypes import DType
    from runtime.workload import parse_resolution

    limit = parse_size(max_vram, "--max-vram") if max_vram is not None else None
    size = parse_resolution(resolution) if resolution is not None else None
    storage = DType.parse(dtype) if dtype else None
    with open_store(db) as store:
        plans = store.list_plans(model=model, gpu=gpu, max_vram=limit, resolution=size, storage_dtype=storage)
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
    resolution: Annotated[Optional[str], typer.Option("--resolution", help="WIDTHxHEIGHT the plan must be for (default: the model's).")] = None,
    batch: Annotated[int, typer.Option("--batch", help="Images per step the plan must be for.", min=1, max=64)] = 1,
    dtype: Annotated[str, typer.Option("--dtype", help="Storage dtype (default: the model's).")] = "",
    text_tokens: Annotated[Optional[int], typer.Option("--text-tokens", help="Text length (default: the model's).", min=1, max=4096)] = None,
    frames: Annotated[Optional[int], typer.Option("--frames", help="Video frames (default: the model's; 1 for an image).", min=1, max=1024)] = None,
    host_ram: Annotated[Optional[str], typer.Option("--host-ram", help="Host RAM the plan's run must fit at its predicted peak, e.g. 32GB.")] = None,
    ram_only: Annotated[bool, typer.Option("--ram-only", help="Only plans that keep every streamed block in RAM (no disk tier).")] = False,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """The fastest stored plan for this model, dtype and workload that fits VRAM (and host RAM): measured time
    (runs of its workload on its target GPU) first, else predicted."""
    import dataclasses

    from db.store import open_store
    from planner.budget import format_size, parse_size
    from runtime.catalog import get_model
    from runtime.dtypes import DType
    from runtime.errors import UserError

    from runtime.workload import parse_resolution

    vram_bytes = parse_size(vram, "--vram")
    host_bytes = parse_size(host_ram, "--host-ram") if host_ram is not None else None
    if resolution is not None:
        parse_resolution(resolution)
    spec = get_model(model)  # an unknown model has no trusted plans: refused here
    workload = spec.workload(resolution, batch, frames=frames)
    if text_tokens is not None:
        workload = dataclasses.replace(workload, text_tokens=text_tokens)
    storage = DType.parse(dtype) if dtype else spec.storage_dtype
    with open_store(db) as store:
        stored = store.best_plan(spec.id, vram_bytes, gpu=gpu, storage_dtype=storage, workload=workload,
                                 max_host_ram=host_bytes, ram_only=ram_only)
    if stored is None:
        on = f" on {gpu}" if gpu else ""
        on += f" within {format_size(host_bytes)} of host RAM" if host_bytes is not None else ""
        on += " in RAM only" if ram_only else ""
        raise UserError(
            f"no stored plan for {model} ({storage.value}, {workload.resolution}, batch {workload.batch}){on} "
            f"fits {format_size(vram_bytes)}: make one with `planner tune --model {model} --vram {vram}"
            f" --resolution {workload.resolution}"
            + (f" --host-ram {host_ram}" if host_ram is not None else "") + "`"
        )
    if json_out:
        print_json({**_summary(stored), "chosen_by": _chosen(stored), "plan": _plan_dict(stored)})
        return
    echo(_chosen_line(stored))
    _print_plan(stored, json_out=False)


def _chosen(stored) -> dict:
    return {"gpu_name": stored.plan.target.gpu_name, "figure": stored.ranked_by,
            "step_ms": stored.ranking_ms, "comparable_runs": stored.measured_runs}


def _chosen_line(stored) -> str:
    p = stored.plan
    if stored.ranked_by == "measured":
        figure = (f"measured {stored.ranking_ms:.1f} ms/step (best of {stored.measured_runs} run(s) of its "
                  f"workload on {p.target.gpu_name})")
    else:
        figure = f"predicted {stored.ranking_ms:.1f} ms/step (no measured run of its workload on its target)"
    return f"best: plan {stored.id} for {p.target.gpu_name}, chosen by its {figure}"


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

    if output is not None:
        check_output(output, "-o", db)  # refused before the store is even opened
    with open_store(db) as store:
        stored = store.get_plan(plan_id)
    if output is None:
        typer.echo(dumps_plan(stored.plan), nl=False)
        return
    save_plan(stored.plan, output, option="-o")
    if json_out:
        print_json({"id": plan_id, "path": str(output)})
    else:
        echo(f"plan {plan_id} written to {output}")


@app.command("import")
def import_plan(
    path: Annotated[Path, typer.Argument(help="A plan.json file.")],
    allow_unknown_model: Annotated[bool, typer.Option(
        "--allow-unknown-model",
        help="Keep a plan for a model this tool's catalog does not know (never returned by `plans best`).",
    )] = False,
    profile: Annotated[Optional[int], typer.Option(
        "--profile", min=1, max=MAX_ID,
        help="Recompute the plan's predictions from this stored profile (default: its target GPU's reference profile).",
    )] = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Store a plan file (validated field by field, then against the catalog model it names);
    its predictions are recomputed here, never taken from the file. Importing it again keeps
    one copy."""
    from planner.app.imports import import_plan as run_import

    done = run_import(path, allow_unknown_model=allow_unknown_model, profile_id=profile, db_url=db)
    if json_out:
        print_json({"id": done.plan_id, "created": done.created, "catalog_model": done.catalog_model,
                    "predicted_step_ms": done.step_ms, "file_step_ms": done.file_step_ms})
        return
    if done.created:
        echo(f"imported {path} as plan {done.plan_id}")
    else:
        echo(f"{path} is already stored as plan {done.plan_id}")
    if done.catalog_model and abs(done.file_step_ms - done.step_ms) > 1e-6 * max(1.0, done.file_step_ms):
        echo(f"note: predicted {done.step_ms:.1f} ms/step by this tool's cost model; "
             f"the file said {done.file_step_ms:.1f}, which is not kept")
    if not done.catalog_model:
        echo(f"note: model {done.model_id!r} is not in the catalog: the plan is kept but never returned by `plans best`")


@app.command("rm")
def remove(plan_id: PlanId, db: DbOption = None, json_out: JsonOption = False) -> None:
    """Remove a stored plan and its measured runs."""
    from db.store import open_store

    with open_store(db) as store:
        store.remove_plan(plan_id)
    if json_out:
        print_json({"id": plan_id, "removed": True})
    else:
        echo(f"removed plan {plan_id}")


# ------------------------------------------------------------ output

_COLUMNS = ["id", "model", "dtype", "gpu", "budget", "workload", "streamed", "depth", "predicted ms",
            "best measured ms", "runs", "created"]


def _summary(stored) -> dict:
    p = stored.plan
    return {
        "id": stored.id,
        "model": p.model.id,
        "storage_dtype": p.model.storage_dtype.value,
        "gpu_name": p.target.gpu_name,
        "vram_budget_bytes": p.target.vram_budget_bytes,
        "resolution": p.workload.resolution,
        "batch": p.workload.batch,
        "cfg": p.workload.cfg.value,
        "text_tokens": p.workload.text_tokens,
        "frames": p.workload.frames,
        "streamed_blocks": len(p.streamed),
        "blocks": len(p.blocks),
        "prefetch_depth": p.prefetch_depth,
        "predicted_step_ms": p.predictions.step_ms,
        "best_measured_ms": stored.best_measured_ms,
        "runs": stored.runs,
        "comparable_runs": stored.measured_runs,
        "catalog_model": stored.catalog_model,
        "created": stored.created.isoformat(),
    }


def _row(stored) -> list:
    from planner.budget import format_size
    from planner.cli.workload_text import workload_text

    s = _summary(stored)
    measured = "-" if s["best_measured_ms"] is None else round(s["best_measured_ms"], 1)
    model = s["model"] if s["catalog_model"] else f"{s['model']} (unknown)"
    return [
        s["id"], model, s["storage_dtype"], s["gpu_name"], format_size(s["vram_budget_bytes"]),
        workload_text(stored.plan.workload), f"{s['streamed_blocks']}/{s['blocks']}", s["prefetch_depth"],
        round(s["predicted_step_ms"], 1), measured, f"{s['comparable_runs']}/{s['runs']}", s["created"][:19],
    ]


def _plan_dict(stored) -> dict:
    from runtime.plan import plan_to_dict

    return plan_to_dict(stored.plan)


def _host_peak(plan):
    """The plan's run's host memory by phase (stated parts and baseline), None where the
    catalog cannot say (a plan of a model this version does not know)."""
    from planner.plan_host import plan_host_peak
    from runtime.errors import UserError
    from runtime.inventory import inventory

    try:
        return plan_host_peak(plan, inventory(plan.model.id, plan.model.storage_dtype))
    except (UserError, KeyError):
        return None


def _print_host(plan) -> None:
    from planner.cli._common import echo
    from planner.cli.explain import host_ram_line

    host = _host_peak(plan)
    if host is not None:
        echo("predicted " + host_ram_line(host))


def _print_plan(stored, json_out: bool) -> None:
    from planner.budget import format_size

    if json_out:
        host = _host_peak(stored.plan)
        print_json({**_summary(stored), "plan": _plan_dict(stored),
                    "host_ram": host.to_dict() if host is not None else None})
        return
    print_table(f"plan {stored.id}", _COLUMNS, [_row(stored)])
    plan = stored.plan
    rows = [[i, b.name, b.kind, b.bytes, format_size(b.bytes),
             b.placement.value + (f" ({b.tier.value})" if b.tier.value != "ram" else ""), b.cast.value]
            for i, b in enumerate(plan.blocks)]
    columns = ["#", "block", "kind", "bytes", "size", "placement", "cast"]
    if plan.experts:  # a placement per expert: the first's columns, then each further one's
        from planner.cli._common import echo
        from runtime.plan import FIRST_EXPERT, Placement

        columns[5:] = [f"{FIRST_EXPERT}", "cast"]
        for e in plan.experts:
            columns += [e.attr, "cast"]
            for row, b in zip(rows, e.blocks):
                row += [b.placement.value, b.cast.value]
            streamed = sum(b.placement is Placement.STREAMED for b in e.blocks)
            echo(f"{e.attr}: {streamed}/{len(e.blocks)} streamed, depth {e.prefetch_depth}, "
                 f"host memory {e.host_memory.value}, predicted {e.predictions.step_ms:.1f} ms/step")
    _print_host(plan)
    print_table(None, columns, rows)
