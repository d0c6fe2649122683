"""`planner explain`: where a plan's time goes, block by block, and a timeline picture."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from planner.cli._common import DbOption, JsonOption, echo, print_json, print_table


def explain(
    plan_file: Annotated[Path, typer.Argument(help="A plan.json written by `planner tune`.")],
    png: Annotated[Optional[Path], typer.Option("--png", help="Write a timeline of both streams here.")] = None,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="Explain with this reference GPU's profile.")] = None,
    profile: Annotated[Optional[int], typer.Option("--profile", help="Explain with this stored profile id.", min=1, max=2**63 - 1)] = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Show where a plan's time goes: compute, copy and wait per block over one step."""
    from planner.explain import explain as explain_plan
    from planner.explain import render_timeline
    from runtime.files import atomic_path, check_target
    from runtime.plan import load_plan

    plan = load_plan(plan_file)
    from db.plan_check import check_storable, is_catalog_model

    if is_catalog_model(plan.model.id):  # every expert's placement too, before any work
        check_storable(plan, source=str(plan_file))
    if png is not None:
        check_target(png, "--png", (".png",), "timeline.png")  # before any work: a directory is not a file name
        _require_matplotlib()
    from planner.app.calibration import load_calibration
    from planner.app.profiles import profile_for_plan

    chosen = profile_for_plan(plan, gpu, profile, db)
    result = explain_plan(plan, chosen, calibration=load_calibration(db, chosen))
    if png is not None:
        with atomic_path(png, "--png", (".png",), "timeline.png") as tmp:
            render_timeline(result, tmp)
    if json_out:
        print_json({**result.to_dict(), "png": str(png) if png else None})
        return
    _print(result, png)


def host_ram_line(host) -> str:
    """`host RAM: peak ... (phase); encode ..., load ..., ...` of a planner.host_peak.HostPeak."""
    from planner.budget import format_size

    phases = ", ".join(f"{p.value} {format_size(n)}" for p, n in host.phases)
    disk = f"; {format_size(host.disk_bytes)} on the disk tier" if host.disk_bytes else ""
    return f"host RAM: peak {format_size(host.peak_bytes)} ({host.peak_phase.value}); {phases}{disk}"


def _require_matplotlib() -> None:
    import importlib.util

    from runtime.errors import UserError

    if importlib.util.find_spec("matplotlib") is None:
        raise UserError("--png needs matplotlib: install it with pip install -e '.[plot]' from this repository")


def _print(result, png: Path | None) -> None:
    from planner.budget import format_size

    p = result.prediction
    rows = [
        [r.name, r.kind, r.placement, f"{r.compute_ms:.2f}", f"{r.cast_ms:.2f}", f"{r.copy_ms:.2f}", f"{r.wait_ms:.2f}"]
        for r in result.rows
    ]
    print_table(
        f"{result.plan.model.id}: one steady step (ms)",
        ["block", "kind", "placement", "compute", "cast", "copy", "wait"],
        rows,
    )
    ratio = result.ratio_to_floor
    floor = (
        f" ({ratio:.2f}x the floor of {p.lower_bound_ms / 1000:.3f} s, the best any placement does within "
        f"{format_size(result.plan.target.vram_budget_bytes)})" if ratio is not None else ""
    )
    echo(
        f"step {p.step_ms / 1000:.3f} s{floor}; compute stream idle {result.wait_ms:.1f} ms; "
        f"peak VRAM {format_size(p.peak_vram_bytes)}"
    )
    if result.host is not None:
        echo(host_ram_line(result.host))
    if result.calibration is not None:
        shown = f"{result.calibrated_step_ms / 1000:.3f} s/step, " if result.calibration.runs else ""
        echo(f"calibrated: {shown}{result.calibration.describe()}")
    echo(
        f"a forward timed between device synchronisations (a benchmark's host clock): "
        f"{p.synchronized_step_ms / 1000:.3f} s/step"
    )
    if result.experts is not None:
        from planner.cli.tune import _experts_lines
        from planner.experts import experts_to_dict

        typer.echo("\n".join(line.strip() for line in _experts_lines(experts_to_dict(result.experts))))
    if png is not None:
        echo(f"timeline written to {png}")
