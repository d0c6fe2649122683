"""`planner tune --profile ID --vram 8GB` for a profile measured on a pipeline folder's first
step (`planner profile --weights FOLDER`): the plan is tuned from the profile's own blocks
and stored, so `planner apply --weights FOLDER --vram` at that budget starts tuned."""

from __future__ import annotations

from pathlib import Path

from planner.cli._common import echo, print_json


def tune_profile_cli(profile_id: int, vram: str, host_ram: str | None, trials: int | None,
                     output: Path | None, db: str | None, json_out: bool) -> None:
    from planner.app.any_profile import tune_profile
    from planner.budget import format_size, parse_size
    from runtime.files import check_target
    from runtime.plan import Placement, plan_to_dict, save_plan

    from db.store import open_store

    if output is not None:
        check_target(output, "-o")  # before any work, and before anything is stored
    with open_store(db) as store:
        profile = store.get_profile(profile_id)
    plan, plan_id = tune_profile(
        profile, parse_size(vram, "--vram"),
        parse_size(host_ram, "--host-ram") if host_ram is not None else None, db, trials,
    )
    if output is not None:
        save_plan(plan, output, option="-o")
    streamed = sum(1 for b in plan.blocks if b.placement is Placement.STREAMED)
    if json_out:
        print_json({"plan_id": plan_id, "profile_id": profile_id, "plan": plan_to_dict(plan),
                    "streamed_blocks": streamed, "output": str(output) if output else None})
        return
    echo(f"plan {plan_id} for {plan.model.id} within {format_size(plan.target.vram_budget_bytes)}, "
         f"from profile {profile_id} (its first step)")
    echo(f"  blocks:        {len(plan.blocks) - streamed} resident / {streamed} streamed, "
         f"depth {plan.prefetch_depth}, host memory {plan.host_memory.value}")
    echo(f"  predicted:     {plan.predictions.step_ms / 1000:.3f} s/step, "
         f"peak VRAM {format_size(plan.predictions.peak_vram_bytes)}")
    if output is not None:
        echo(f"  written to:    {output}")
