"""`planner tune`: find the fastest plan that fits a VRAM budget, store it, write plan.json."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from planner.cli._common import DbOption, check_output, store_name, JsonOption, echo, print_json, print_table, status


def tune(
    model: Annotated[Optional[str], typer.Option("--model", help="Model id from `planner models list` (leave it out with a --profile measured by `planner profile --weights`).")] = None,
    vram: Annotated[str, typer.Option("--vram", help="VRAM budget, e.g. 8GB (GB means GiB).")] = ...,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="Plan from this reference GPU's profile.")] = None,
    profile: Annotated[Optional[int], typer.Option("--profile", help="Plan from this stored profile id (`planner profiles list`).")] = None,
    resolution: Annotated[Optional[str], typer.Option(help="Image size WIDTHxHEIGHT (default: the model's, or the --profile's).")] = None,
    batch: Annotated[Optional[int], typer.Option(help="Images per step (default 1, or the --profile's).")] = None,
    frames: Annotated[Optional[int], typer.Option(help="Video frames (default: the model's; 1 for images).")] = None,
    dtype: Annotated[str, typer.Option(help="Storage dtype: bf16 or fp8 (default: the model's).")] = "",
    quant: Annotated[str, typer.Option("--quant", help="Plan for a quantized checkpoint you may not have: q8_0, q6_k, q5_k, q4_k, ..., nf4.")] = "",
    weights: Annotated[Optional[Path], typer.Option("--weights", help="Plan for this checkpoint's exact bytes (.gguf, NF4 or plain .safetensors).")] = None,
    trials: Annotated[Optional[int], typer.Option(help="Optuna trials.")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Stop the search after this many seconds.")] = None,
    seed: Annotated[int, typer.Option(help="Search seed: same seed, same plan.")] = 0,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Write the plan here.")] = None,
    verify: Annotated[int, typer.Option(help="Run the K best candidates on this GPU; keep the fastest.")] = 0,
    fresh: Annotated[bool, typer.Option("--fresh", help="Profile this machine's GPU again even if a profile is stored.")] = False,
    max_error: Annotated[Optional[float], typer.Option("--max-error", help="Search mixed plans: blocks in fp8/q8_0/q4_k where the newest `planner analyze` table says so, summed relative output error under this (e.g. 0.05).")] = None,
    host_ram: Annotated[Optional[str], typer.Option("--host-ram", help="Host RAM the whole run may use, e.g. 32GB (default: what this machine has available; 64 GiB for a reference --gpu).")] = None,
    formats: Annotated[bool, typer.Option("--formats", help="Rank bf16, fp8, q8_0, q6_k, q5_k, q4_k and nf4 within both budgets (a reference --gpu).")] = False,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Find the fastest plan that fits a VRAM budget (Optuna over the cost model)."""
    from planner.budget import parse_size
    from planner.search import DEFAULT_TRIALS
    from planner.app.request import TuneRequest
    from planner.app.summary import summary
    from planner.app.tune import tune as run_tune
    from runtime.catalog import get_model
    from runtime.dtypes import DType
    from runtime.errors import UserError
    from runtime.plan import save_plan

    if model is None:  # a first-step profile of a pipeline folder names its own model
        from planner.cli.tune_any import tune_profile_cli

        if profile is None:
            raise UserError("give --model ID, or --profile ID of a profile `planner profile --weights` measured")
        return tune_profile_cli(profile, vram, host_ram, trials, output, db, json_out)
    spec = get_model(model)
    if batch is not None and not 1 <= batch <= 64:
        raise UserError(f"--batch {batch} is out of range: give 1 to 64 images per step")
    workload = spec.workload(resolution, batch or 1, frames)
    storage = _storage(dtype, quant, weights) or spec.storage_dtype
    request = TuneRequest(
        model_id=spec.id,
        budget_bytes=parse_size(vram, "--vram"),
        workload=workload,
        storage_dtype=storage,
        weights=weights,
        gpu=gpu,
        profile_id=profile,
        trials=trials if trials is not None else DEFAULT_TRIALS,
        timeout_s=timeout,
        seed=seed,
        db_url=db,
        verify=verify,
        fresh=fresh,
        host_ram_bytes=parse_size(host_ram, "--host-ram") if host_ram is not None else None,
        workload_from_profile=resolution is None and batch is None,
        max_error=max_error,
    )
    if output is not None:
        check_output(output, "-o", db)  # before any work, and before anything is stored
    if formats and gpu is None:
        raise UserError("--formats compares reference profiles: give --gpu NAME")
    with status(f"searching placements for {spec.id} ({request.trials} trials)", enabled=not json_out):
        outcome = _tune_or_say_which_formats_fit(request, run_tune)
    rows = ()
    if formats or quant or weights is not None:  # within the host RAM the plan was chosen in
        from planner.app.formats import compare_formats, rank_formats

        as_tuned = dataclasses.replace(request, storage_dtype=outcome.inventory.storage_dtype)
        limits = (outcome.host.host_ram_bytes, outcome.host.parts)
        if formats:
            with status("ranking storage formats", enabled=not json_out):
                rows = rank_formats(as_tuned, *limits)
        else:
            rows = compare_formats(as_tuned, *limits)
    if output is not None:
        save_plan(outcome.plan, output, option="-o")
    data = {**summary(outcome), "formats": [row.to_dict() for row in rows], "formats_ranked": bool(formats),
            "store": store_name(db),
            "mixed": outcome.mixed.to_dict() if outcome.mixed is not None else None}
    if json_out:
        print_json({**data, "output": str(output) if output else None})
        return
    _print(data, output)


def _tune_or_say_which_formats_fit(request, run_tune):
    """The tuned outcome; where no plan fits the host RAM in the requested format (and the
    text encoders are not what is over it), the refusal also names the formats that fit."""
    from planner.host_ram import HostRamRefusal

    try:
        return run_tune(request)
    except HostRamRefusal as e:
        if e.by_encoders or request.gpu is None:
            raise
        from planner.app.formats import fitting_formats_sentence, rank_for_request
        from runtime.errors import UserError

        fits = fitting_formats_sentence(rank_for_request(request))
        if not fits:
            raise
        raise UserError(f"{e}; within both budgets these formats fit: {fits}") from e


def _storage(dtype: str, quant: str, weights: Optional[Path]):
    from runtime.dtypes import DType
    from runtime.errors import UserError

    given = [name for name, value in (("--dtype", dtype), ("--quant", quant)) if value]
    if weights is not None:
        given.append("--weights")
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} both name the storage: give one of them")
    if quant:
        kinds = [d.value for d in DType if d.is_quantized]
        if quant.lower() not in kinds:
            raise UserError(f"unknown --quant {quant!r}: use one of {', '.join(kinds)}")
        return DType(quant.lower())
    if weights is not None and not weights.exists():
        raise UserError(f"--weights {weights} does not exist: give a .gguf or .safetensors file")
    return DType.parse(dtype) if dtype else None


def _casts(p: dict) -> str:
    """`pre`, or how streamed and resident blocks cast when they differ (fp8 storage)."""
    resident = p.get("resident_cast", p["cast"])
    if resident == p["cast"] and not p.get("precast"):
        return p["cast"]
    text = f"{p['cast']} streamed, {resident} resident"
    return text + (f" ({p['precast']} of them pre-cast)" if p.get("precast") else "")


def _print(data: dict, output: Path | None) -> None:
    from planner.budget import format_size

    p = data["placement"]
    counts = ", ".join(
        f"{c['resident']} {kind} resident / {c['streamed']} streamed" for kind, c in p["blocks"].items()
    )
    source = data["profile"]
    where = f"reference profile of {source['target']}" if source["reference"] else f"profile {source['id']} ({source['target']})"
    lines = [
        f"plan {data['plan_id']} for {data['plan']['model']['id']} within {format_size(data['plan']['target']['vram_budget_bytes'])}, from the {where}",
        f"  blocks:        {counts} (pattern {p['pattern']})",
        f"  prefetch:      depth {p['depth']}, cast {_casts(p)}, host memory {p['host_memory']}",
        *host_lines(data["host_ram"], p["host_memory"]),
        f"  predicted:     {data['step_ms'] / 1000:.3f} s/step, peak VRAM {format_size(data['peak_vram_bytes'])}",
    ]
    if data.get("passed_over") is not None:
        lines.append(passed_over_line(data["passed_over"], data["step_ms"]))
    cal = data.get("calibration")
    if cal is not None:
        shown = f"{cal['step_ms'] / 1000:.3f} s/step, " if cal["runs"] else ""
        lines.append(f"  calibrated:    {shown}{cal['text']}")
    if data["ratio_to_bound"] is not None:
        lines.append(
            f"  floor:         {data['lower_bound_ms'] / 1000:.3f} s/step, the best any placement does within the "
            f"budget (this plan is {data['ratio_to_bound']:.2f}x it)"
        )
    if data["experts"] is not None:
        lines.extend(_experts_lines(data["experts"]))
    if data["measured_step_ms"] is not None:
        lines.append(f"  measured:      {data['measured_step_ms'] / 1000:.3f} s/step")
    if data.get("mixed") is not None:
        m = data["mixed"]
        lines.append(f"  mixed:         {len(m['options'])} blocks converted or pruned, predicted "
                     f"error {m['predicted_error']:.3g} (max {m['max_error']:.3g}); the uniform plan: "
                     f"{m['uniform_step_ms'] / 1000:.3f} s/step")
    plan_id, store = data["plan_id"], data["store"]
    if output is not None:
        lines.append(f"  written to:    {output} (and stored as plan {plan_id} in {store})")
    else:
        lines.append(f"  stored:        plan {plan_id} in {store}; write it as a file with "
                     f"`planner plans export {plan_id} -o plan.json` (or tune with -o plan.json)")
    for line in lines:
        echo(line)
    rows = [["tuned (this plan)", "offload-planner", f"{data['step_ms'] / 1000:.3f}", format_size(data["peak_vram_bytes"])]]
    for row in data["policies"]:
        if row["fits"]:
            rows.append([row["policy"], row["peer"], f"{row['step_ms'] / 1000:.3f}", format_size(row["peak_vram_bytes"])])
        elif row["fits_vram"]:
            rows.append([row["policy"], row["peer"], f"needs {format_size(row['host_peak_bytes'])} host RAM: over",
                         format_size(row["peak_vram_bytes"])])
        else:
            rows.append([row["policy"], row["peer"], "does not fit", ""])
    print_table("peer policies at the same budget (predicted)", ["policy", "as in", "s/step", "peak VRAM"], rows)
    if data["formats_ranked"]:
        _print_ranked(data["formats"])
    elif data["formats"]:
        plan = data["plan"]
        host = data["host_ram"]
        rows = [[f"{plan['model']['storage_dtype']} (this plan)", format_size(data["weight_bytes"]),
                 f"{data['step_ms'] / 1000:.3f}", format_size(data["peak_vram_bytes"]),
                 _host_cell(host.get("peak_bytes"), host.get("disk_bytes", 0)), _casts(p)]]
        for row in data["formats"]:
            if row["fits"]:
                rows.append([row["storage"], format_size(row["weight_bytes"]), f"{row['step_ms'] / 1000:.3f}",
                             format_size(row["peak_vram_bytes"]), _host_cell(row["host_peak_bytes"], row["disk_bytes"]),
                             row["cast"]])
            else:
                rows.append([row["storage"], format_size(row["weight_bytes"]), "does not fit", "", "", ""])
        print_table("storage formats within both budgets (predicted)",
                    ["storage", "weights", "s/step", "peak VRAM", "host RAM peak", "cast"], rows)


def _host_cell(peak: int | None, disk: int) -> str:
    """`15.45 GiB`, with `, 8.07 GiB on disk` where the plan reads from the disk tier."""
    from planner.budget import format_size

    if peak is None:
        return ""
    return format_size(peak) + (f", {format_size(disk)} on disk" if disk else "")


def passed_over_line(faster: dict, step_ms: float) -> str:
    """The faster plan a lighter one won over, and what it would cost beside its step."""
    from planner.budget import format_size
    from planner.host_ram import HEAVY_MARGIN

    costs = []
    if faster["disk_bytes"]:
        costs.append(f"reads {format_size(faster['disk_bytes'])} from disk per forward")
    if faster["dequantized_bytes"]:
        costs.append(f"casts its streamed blocks on the host (`pre`, {format_size(faster['dequantized_bytes'])} "
                     "in host RAM)")
    return (f"  passed over:   a plan {step_ms / faster['step_ms']:.3f}x as fast ({faster['step_ms'] / 1000:.3f} s/step) "
            f"that {' and '.join(costs)}; each such cost must buy {HEAVY_MARGIN:.0%} of speed")


def host_lines(host: dict, host_memory: str) -> list[str]:
    """The run's host RAM: the peak and its phase against the limit, each phase, the tiers."""
    from planner.budget import format_size

    if "peak_bytes" not in host:
        return []
    phases = ", ".join(f"{phase} {format_size(n)}" for phase, n in host["phases"].items())
    lines = [
        f"  host RAM:      peak {format_size(host['peak_bytes'])} ({host['peak_phase']}) of "
        f"{format_size(host['limit_bytes'])} ({host['limit_source']})",
        f"  by phase:      {phases}; baseline {format_size(host['baseline_bytes'])} ({host['baseline_source']})",
    ]
    tier = f"  streamed:      {format_size(host['ram_pack_bytes'])} in RAM ({host_memory})"
    if host["disk_blocks"]:
        tier += (f", {len(host['disk_blocks'])} blocks ({format_size(host['disk_bytes'])}) on the disk tier, "
                 f"read in {host['disk_ms'] / 1000:.3f} s/step through {format_size(host['staging_bytes'])} of staging")
    return lines + [tier]


def _print_ranked(rows: list[dict]) -> None:
    """`--formats`: every format within both budgets, fastest first, then those that do not fit."""
    from planner.budget import format_size

    table = []
    for row in rows:
        kind = "lossless" if row["lossless"] else "lossy"
        if row["fits"]:
            table.append([row["storage"], kind, f"{row['step_ms'] / 1000:.3f}", format_size(row["peak_vram_bytes"]),
                          _host_cell(row["host_peak_bytes"], row["disk_bytes"]), row["file"]])
        else:
            table.append([row["storage"], kind, "does not fit", "", "", row["file"]])
    print_table("storage formats within both budgets (predicted, fastest first)",
                ["storage", "", "s/step", "peak VRAM", "host RAM peak", "file you need"], table)


def _experts_lines(experts: dict) -> list[str]:
    from planner.budget import format_size

    phases = ", then ".join(
        f"{p['expert']} {p['steps']} steps at {p['step_ms'] / 1000:.3f} s ({p['streamed_blocks']} streamed)"
        for p in experts["phases"]
    )
    same = experts["same_placement"]
    switch = experts["switch"]
    return [
        f"  experts:       {phases}" + (" (one placement for both)" if same else "")
        + f"; peak VRAM {format_size(experts['peak_vram_bytes'])}",
        f"  expert switch: {format_size(switch['out_bytes'])} out, {format_size(switch['in_bytes'])} in, "
        f"{format_size(switch['packed_bytes'])} packed: {switch['ms'] / 1000:.2f} s once per clip; "
        f"whole clip {experts['total_ms'] / 1000:.1f} s",
    ]
