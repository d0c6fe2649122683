"""`planner tune --max-error E`: the fastest placement of a mixed plan, blocks stored in their
own formats where the newest `planner analyze` table says it costs little, the summed predicted
error under E, within both budgets. The uniform plan (every block in the model's storage) is
searched at the same budget too, for comparison."""

from __future__ import annotations

import dataclasses

from planner.app.placing import plan_of
from planner.app.profiles import host_parts, host_ram_limit, request_inventory, resolve_profiles
from planner.app.request import TuneOutcome, TuneRequest
from planner.host_ram import choose
from planner.mixed import DEFAULT_MEMORY_GBPS, assignments, profile_for
from planner.search import Settings, search
from profiler.reference import find_gpu
from runtime.analysis.mixed import converted_inventory
from runtime.errors import UserError
from runtime.plan import CastMode


@dataclasses.dataclass(frozen=True)
class MixedChoice:
    options: dict  # block -> runtime.analysis.table.BlockOption
    predicted_error: float  # summed relative error of the chosen blocks
    max_error: float
    analysis_id: int  # the stored block analysis it came from
    analysis_inputs: int  # calibration forwards of that table
    uniform_step_ms: float  # the uniform plan's predicted step at the same budgets
    uniform_peak_vram_bytes: int

    def to_dict(self) -> dict:
        return {"options": {b: o.name for b, o in self.options.items()},
                "predicted_error": self.predicted_error, "max_error": self.max_error,
                "analysis_id": self.analysis_id, "analysis_inputs": self.analysis_inputs, "uniform_step_ms": self.uniform_step_ms,
                "uniform_peak_vram_bytes": self.uniform_peak_vram_bytes}


def tune_mixed(req: TuneRequest) -> TuneOutcome:
    from db.store import open_store

    if req.weights is not None or req.storage_dtype.casts:
        raise UserError("--max-error mixes formats into a plain (bf16/fp16/fp32) model: drop "
                        "--weights, --quant and --dtype fp8")
    with open_store(req.db_url) as store:
        stored = store.latest_block_analysis(req.model_id)
    if stored is None:
        raise UserError(f"no block analysis of {req.model_id} is stored: run `planner analyze "
                        f"--model {req.model_id} --weights ... --prompts ...` first")
    table = stored.table
    source = resolve_profiles(req)
    inv = request_inventory(req)
    limit, limit_source = host_ram_limit(req, source)
    parts = host_parts(req, source, inv, limit_source, False)
    settings = Settings(req.budget_bytes, trials=req.trials, timeout_s=req.timeout_s, seed=req.seed)
    uniform = choose(inv, source.profiles, search(inv, source.profiles, settings),
                     req.budget_bytes, limit, parts)
    gbps = _memory_gbps(source)
    best = None
    for assignment in assignments(table.errors_by_block(), _saved(inv, table), req.max_error):
        mixed = converted_inventory(inv, *_conversions(table, assignment.formats))
        profiles = {cfg: profile_for(p, mixed, gbps) for cfg, p in source.profiles.items()}
        result = search(mixed, profiles, settings)
        host = choose(mixed, profiles, result, req.budget_bytes, limit, parts)
        if best is None or host.scored.step_ms < best[3].scored.step_ms:
            best = (assignment, mixed, dataclasses.replace(source, profiles=profiles), host, result)
    if best is None:
        smallest = min((r.rel_error for r in table.rows), default=float("nan"))
        raise UserError(f"no block can change format within --max-error {req.max_error}: the "
                        f"smallest measured error is {smallest:.3g}; give a larger --max-error")
    assignment, mixed, mixed_source, host, result = best
    formats, pruned = _conversions(table, assignment.formats)
    plan, prediction = plan_of(mixed, mixed_source, host.scored, req.budget_bytes, host.on_disk,
                               host.disk_floor_bytes, formats=formats, pruned=pruned)
    if host.host is not None:  # the plan file states its run's host peak (planner.host_peak)
        plan = dataclasses.replace(plan, predictions=dataclasses.replace(
            plan.predictions, host_peak_bytes=host.host.peak_bytes))
    plan = _plain_blocks_pre(plan)
    with open_store(req.db_url) as store:
        plan_id = store.save_plan(plan)
        store.link_plan_to_analysis(plan_id, stored.analysis_id)
    choice = MixedChoice(dict(assignment.formats), assignment.predicted_error, req.max_error,
                         stored.analysis_id, table.inputs, uniform.scored.step_ms,
                         uniform.scored.peak_vram_bytes)
    return TuneOutcome(plan, prediction, result, mixed_source, mixed, plan_id, host.scored,
                       None, host, limit_source, mixed=choice)


def _plain_blocks_pre(plan):
    """Blocks left in the model's plain storage have nothing to cast: `pre`, as every plain
    plan says (the search may have drawn `auto` for them; it costs and moves the same)."""
    blocks = tuple(b if b.format is not None else dataclasses.replace(b, cast=CastMode.PRE)
                   for b in plan.blocks)
    return dataclasses.replace(plan, blocks=blocks)


def _conversions(table, options) -> tuple[dict, dict]:
    """(formats, pruned units) by block, of `options` (block -> BlockOption)."""
    formats = {b: o.format for b, o in options.items() if o.format is not None}
    pruned = {b: table.row(b, o).pruned for b, o in options.items() if o.format is None}
    return formats, pruned


def _saved(inv, table) -> dict:
    """Bytes each option saves per block (every block converted once per option, on meta)."""
    options = {row.option for row in table.rows}
    saved: dict[str, dict] = {b.name: {} for b in inv.blocks}
    for option in options:
        if option.format is not None:
            converted = converted_inventory(inv, {b.name: option.format for b in inv.blocks})
        else:
            converted = converted_inventory(inv, {}, {r.block: r.pruned for r in table.rows
                                             if r.option == option})
        for plain, conv in zip(inv.blocks, converted.blocks):
            saved[plain.name][option] = plain.bytes - conv.bytes
    return saved


def _memory_gbps(source) -> float:
    """The GPU's memory bandwidth for dequantization estimates: its spec sheet where the
    profile's target is a known GPU, else a conservative default."""
    try:
        return find_gpu(source.target_name).memory_gbps
    except UserError:
        return DEFAULT_MEMORY_GBPS
