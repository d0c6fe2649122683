"""`planner tune` as a library: find the profile, search, build the plan, store it.

The CLI parses options into a `TuneRequest` and calls `tune()`; everything it prints comes
from `summary()`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

from planner.costmodel import CostModel, Prediction
from planner.search import DEFAULT_TRIALS, Scored, SearchResult, Settings, search
from planner.space import Candidate, space_of
from runtime.dtypes import DType
from runtime.errors import UserError
from runtime.plan import Plan, Predictions, Target, build_plan
from runtime.workload import CfgMode, Workload


MAX_SEED = 2**32 - 1  # Optuna's TPE sampler seeds numpy, which takes 32-bit seeds


@dataclasses.dataclass(frozen=True)
class TuneRequest:
    model_id: str
    budget_bytes: int
    workload: Workload
    storage_dtype: DType
    gpu: str | None = None  # reference GPU id: plan from its reference profile
    profile_id: int | None = None  # a stored profile
    trials: int = DEFAULT_TRIALS
    timeout_s: float | None = None
    seed: int = 0
    db_url: str | None = None
    verify: int = 0  # run this many best candidates on the GPU and keep the measured best
    fresh: bool = False  # measure this machine's GPU again even if a profile is stored
    host_ram_bytes: int | None = None  # pinned host RAM allowed; None: see `host_ram_limit`
    workload_from_profile: bool = False  # --profile without --resolution/--batch: the profile's
    weights: Path | None = None  # plan for this checkpoint's exact bytes (GGUF, NF4, safetensors)

    def __post_init__(self) -> None:
        if self.gpu is not None and self.profile_id is not None:
            raise UserError("--gpu and --profile both name a profile: give one of them")
        if not 1 <= self.trials <= 100_000:
            raise UserError(f"--trials {self.trials} is out of range: give 1 to 100000")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"--seed {self.seed} is out of range: give 0 to {MAX_SEED} (2**32-1)")
        if self.profile_id is not None and not 1 <= self.profile_id <= 2**63 - 1:
            raise UserError(f"--profile {self.profile_id} is not a profile id: `planner profiles list` shows them")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise UserError(f"--timeout {self.timeout_s} is not a duration: give seconds above 0")
        if not 0 <= self.verify <= 32:
            raise UserError(f"--verify {self.verify} is out of range: give 1 to 32 candidates")


@dataclasses.dataclass(frozen=True)
class ProfileSource:
    profiles: Mapping[CfgMode, object]  # profiler.types.Profile by CFG mode
    target_name: str  # reference GPU id, or the GPU name the profile was measured on
    profile_id: int | None  # stored profile id; None for a reference profile
    reference: bool
    calibration: object = None  # planner.calibration.Calibration of a stored profile


@dataclasses.dataclass(frozen=True)
class TuneOutcome:
    plan: Plan
    prediction: Prediction
    result: SearchResult
    source: ProfileSource
    inventory: object
    plan_id: int
    chosen: Scored  # the candidate the plan was built from
    measured_step_ms: float | None = None
    host: object | None = None  # planner.host_ram.Choice: pinned bytes and the limit
    host_ram_source: str = ""  # where the host RAM limit came from, for the summary
    experts: object = None  # planner.experts.ExpertsPrediction for two-expert models


def cfg_modes(workload: Workload) -> tuple[CfgMode, ...]:
    """CFG modes to search: the workload's own, which is how the model's diffusers pipeline
    runs guidance (the catalog's `cfg`). `planner apply` drives that pipeline and cannot
    change it (QwenImagePipeline and HunyuanImage's guider always run two forwards), so a
    plan in the other mode would be run, and timed, in a mode it was not made for."""
    return (workload.cfg,)


def resolve_profiles(req: TuneRequest) -> ProfileSource:
    """The profile(s) to plan from: --gpu, --profile, this machine's GPU, or a clear refusal."""
    if req.gpu is not None:
        from profiler.reference import find_gpu, reference_profile

        spec = find_gpu(req.gpu)
        inv = request_inventory(req) if req.weights is not None else None
        profiles = {
            cfg: reference_profile(spec.id, req.model_id, dataclasses.replace(req.workload, cfg=cfg),
                                   req.storage_dtype, inventory=inv)
            for cfg in cfg_modes(req.workload)
        }
        return ProfileSource(profiles, spec.id, None, True)
    if req.profile_id is not None:
        from db.store import open_store

        with open_store(req.db_url) as store:
            profile = store.get_profile(req.profile_id)
        if profile.model_id != req.model_id:
            raise UserError(
                f"profile {req.profile_id} is of {profile.model_id}, not {req.model_id}: "
                f"pass --model {profile.model_id} or a profile of {req.model_id}"
            )
        if not req.workload_from_profile:
            _check_profile_workload(req, profile)
        source = ProfileSource({profile.workload.cfg: profile}, profile.machine.gpu_name, profile.id, False)
    else:
        source = _this_machine(req)
    from planner.calibration import load_calibration

    profile = next(iter(source.profiles.values()))
    return dataclasses.replace(source, calibration=load_calibration(req.db_url, profile, request_inventory(req)))


def _check_profile_workload(req: TuneRequest, profile) -> None:
    """A profile's timings hold for the workload it was measured at, not for another one."""
    have, want = profile.workload, req.workload
    for name, shown in (("resolution", "--resolution"), ("batch", "--batch"), ("text_tokens", None),
                        ("frames", None)):
        a, b = getattr(have, name, 1), getattr(want, name, 1)
        if a == b:
            continue
        option = f"{shown} {a}" if shown else f"a request with {name} {a}"
        raise UserError(
            f"profile {profile.id} was measured at {name} {a}, not {b}: pass {option} (or leave it "
            f"out to use the profile's), or measure one with `planner profile --model {req.model_id} "
            f"--resolution {want.resolution} --batch {want.batch}`"
        )


def host_ram_limit(req: TuneRequest, source: ProfileSource) -> tuple[int, str]:
    """Pinned host RAM allowed: --host-ram, else what the machine can pin (this machine now,
    or the profiled machine's RAM), else the stated default for a reference GPU."""
    from planner.host_ram import REFERENCE_HOST_RAM_BYTES

    if req.host_ram_bytes is not None:
        return req.host_ram_bytes, "--host-ram"
    if source.reference:
        return REFERENCE_HOST_RAM_BYTES, "reference default (--host-ram to change)"
    profile = next(iter(source.profiles.values()))
    if req.profile_id is not None:
        return profile.machine.host_ram_bytes, f"RAM of the machine profile {req.profile_id} was measured on"
    from runtime.engine.host_memory import available_host_bytes

    return min(available_host_bytes(), profile.machine.host_ram_bytes or available_host_bytes()), \
        "available on this machine"


def _this_machine(req: TuneRequest) -> ProfileSource:
    import torch

    if not torch.cuda.is_available():
        from profiler.reference import reference_gpus

        ids = ", ".join(spec.id for spec in reference_gpus())
        raise UserError(
            f"no GPU on this machine and no profile given: pass --gpu NAME (one of {ids}) "
            f"or --profile ID (a stored profile: `planner profiles list` shows them)"
        )
    from profiler.stored import stored_or_measured

    device = f"cuda:{torch.cuda.current_device()}"
    profile, _ = stored_or_measured(
        req.model_id, req.workload, req.storage_dtype, device, req.db_url, fresh=req.fresh
    )
    return ProfileSource({profile.workload.cfg: profile}, profile.machine.gpu_name, profile.id, False)


def plan_of(inventory, source: ProfileSource, scored: Scored, budget: int) -> tuple[Plan, Prediction]:
    """The plan file for a scored candidate, with the cost model's full prediction."""
    c = scored.candidate
    profile = source.profiles[c.cfg]
    space = space_of(inventory, tuple(source.profiles))
    layout = space.layout(c)
    prediction = CostModel(inventory, profile).predict(layout, budget)
    streamed = {b.name for b, s in zip(inventory.blocks, layout.streamed) if s}
    plan = build_plan(
        inventory,
        streamed,
        workload=profile.workload,
        target=Target(source.target_name, budget),
        prefetch_depth=c.depth,
        host_memory=c.host_memory,
        cast=c.cast,
        casts={b.name: cast for b, cast in zip(inventory.blocks, layout.casts)},
        predictions=Predictions(prediction.step_ms, prediction.peak_vram_bytes, prediction.lower_bound_ms),
        profile_id=source.profile_id,
    )
    return plan, prediction


def request_inventory(req: TuneRequest):
    """The inventory `req` plans for: the checkpoint's exact bytes, or the catalog model's."""
    from runtime.inventory import inventory, inventory_of_checkpoint

    if req.weights is not None:
        return inventory_of_checkpoint(req.model_id, req.weights)
    return inventory(req.model_id, req.storage_dtype)


def with_weights(req: TuneRequest) -> TuneRequest:
    """`req` with the storage dtype of its checkpoint, where it names one."""
    if req.weights is None:
        return req
    return dataclasses.replace(req, storage_dtype=request_inventory(req).storage_dtype)


def tune(req: TuneRequest) -> TuneOutcome:
    """Search the space for `req` and store the best plan (and return everything found)."""
    if req.verify:
        _require_gpu_for_verify()
    req = with_weights(req)
    source = resolve_profiles(req)
    inv = request_inventory(req)
    settings = Settings(req.budget_bytes, trials=req.trials, timeout_s=req.timeout_s, seed=req.seed)
    result = search(inv, source.profiles, settings)
    from planner.host_ram import choose

    limit, limit_source = host_ram_limit(req, source)
    host = choose(inv, source.profiles, result, req.budget_bytes, limit)
    best, measured = host.scored, None
    if req.verify:
        best, measured = _verify(inv, source, result, req, host)
    experts = None
    if _experts_spec(req.model_id) is not None:
        plan, prediction, best, host, experts = place_experts(
            inv, source, result, req, host, best, keep_first=bool(req.verify)
        )
    else:
        plan, prediction = plan_of(inv, source, best, req.budget_bytes)
    from db.store import open_store

    with open_store(req.db_url) as store:
        plan_id = store.save_plan(plan)
    return TuneOutcome(plan, prediction, result, source, inv, plan_id, best, measured, host,
                       limit_source, experts=experts)


def _experts_spec(model_id: str):
    from runtime.catalog import find_model

    spec = find_model(model_id)
    return spec.experts if spec is not None else None


def place_experts(inv, source: ProfileSource, result: SearchResult, req: TuneRequest, host,
                  best: Scored, keep_first: bool = False):
    """Both experts' placements of a two-expert model, chosen together among the search's
    candidates within both budgets (`planner.experts.choose_experts`), `best` first so that
    ties keep it; `keep_first` keeps `best` for the first expert (measured by --verify).
    Returns (plan, first expert's prediction, its candidate, host choice, both phases): the
    plan carries the second expert's placement where it differs."""
    from planner.experts import plan_experts
    from planner.host_ram import Evaluator, fitting, pinned_bytes, streamed_bytes
    from runtime.catalog import get_model
    from runtime.plan import with_experts

    spec = get_model(req.model_id)
    ev = Evaluator(inv, source.profiles)
    cfg = best.candidate.cfg
    options = [best] + [s for s in fitting(ev, result, host.host_ram_bytes)
                        if s.candidate != best.candidate and s.candidate.cfg == cfg]
    space = space_of(inv, tuple(source.profiles))
    model = CostModel(inv, source.profiles[cfg])
    h, low, phases = plan_experts(
        model, [space.layout(s.candidate) for s in options], spec.experts, spec.default_steps,
        req.budget_bytes, high=0 if keep_first else None,
    )
    high = options[h]
    plan, prediction = plan_of(inv, source, high, req.budget_bytes)
    if options[low].candidate != high.candidate:
        second, _ = plan_of(inv, source, options[low], req.budget_bytes)
        plan = with_experts(plan, {spec.experts.attrs[1]: second})
    pinned = max(pinned_bytes(ev, options[i].candidate) for i in (h, low))  # one packed at a time
    host = dataclasses.replace(host, scored=high, pinned_bytes=pinned,
                               streamed_bytes=streamed_bytes(ev, high.candidate),
                               changed=high.candidate != result.best.candidate)
    return plan, prediction, high, host, phases


def _require_gpu_for_verify() -> None:
    import torch

    if not torch.cuda.is_available():
        raise UserError("--verify runs candidates on a CUDA GPU and this machine has none: drop --verify")


def _verify(inv, source: ProfileSource, result: SearchResult, req: TuneRequest, host) -> tuple[Scored, float]:
    """Run the `req.verify` best predicted candidates through the runtime; keep the fastest."""
    import torch

    from db.store import open_store
    from planner.host_ram import Evaluator, pinned_bytes
    from runtime.catalog import get_model
    from runtime.families import get_family
    from runtime.random_weights import random_model

    ev = Evaluator(inv, source.profiles)
    ranked = sorted(
        (s for s in result.pareto if s.peak_vram_bytes <= result.room_bytes
         and pinned_bytes(ev, s.candidate) <= host.host_ram_bytes),
        key=lambda s: s.step_ms,
    )
    first = host.scored
    candidates = [first] + [s for s in ranked if s.candidate != first.candidate]
    gpu_name = torch.cuda.get_device_name(torch.cuda.current_device())
    adapter = get_family(get_model(req.model_id).family)
    model = random_model(req.model_id, req.storage_dtype, fill_device="cuda")  # seconds, not minutes
    measured = []
    with open_store(req.db_url) as store:
        for scored in candidates[: req.verify]:
            plan, _ = plan_of(inv, source, scored, req.budget_bytes)
            step_ms, peak = _measure(model, adapter, plan)
            store.record_run(store.save_plan(plan), step_ms, peak, "cuda", workload=plan.workload,
                             steps=3, gpu_name=gpu_name)
            measured.append((step_ms, scored))
    step_ms, scored = min(measured, key=lambda m: m[0])
    return scored, step_ms


def _measure(model, adapter, plan, steps: int = 3) -> tuple[float, int]:
    import torch

    from runtime.apply import apply_plan

    handle = apply_plan(model, plan, device="cuda")
    try:
        inputs = adapter.model_inputs(
            model, plan.workload, handle.device, plan.model.compute_dtype.torch()
        )
        torch.cuda.reset_peak_memory_stats(handle.device)
        with torch.inference_mode():
            model(**inputs)  # warm-up
            handle.enable_timing()
            for _ in range(steps * plan.workload.forwards_per_step):
                model(**inputs)
        times = handle.timings()
        per_step = sum(times[-plan.workload.forwards_per_step:])
        return per_step, int(torch.cuda.max_memory_allocated(handle.device))
    finally:
        handle.remove()


def host_bytes(outcome: TuneOutcome) -> int:
    """Host RAM the streamed blocks occupy, in the dtype the plan keeps them on the host."""
    model = CostModel(outcome.inventory, outcome.source.profiles[outcome.plan.workload.cfg])
    cast = outcome.plan.streamed[0].cast if outcome.plan.streamed else outcome.plan.blocks[0].cast
    names = {b.name for b in outcome.plan.streamed}
    return sum(t for b, t in zip(outcome.inventory.blocks, model.dev_total[cast]) if b.name in names)


def summary(outcome: TuneOutcome) -> dict:
    """Everything `planner tune` prints, as JSON-ready data."""
    from runtime.plan import plan_to_dict

    res, plan, pred = outcome.result, outcome.plan, outcome.prediction
    from planner.host_ram import pinned_bytes
    from planner.search import Evaluator

    space = space_of(outcome.inventory, tuple(outcome.source.profiles))
    best = outcome.chosen
    ev = Evaluator(outcome.inventory, outcome.source.profiles)
    pinned = {p: pinned_bytes(ev, s.candidate) for p, s in res.policies if s is not None}
    limit = outcome.host.host_ram_bytes if outcome.host else float("inf")
    return {
        "plan_id": outcome.plan_id,
        "plan": plan_to_dict(plan),
        "profile": {
            "id": outcome.source.profile_id,
            "reference": outcome.source.reference,
            "target": outcome.source.target_name,
        },
        "placement": {**best.candidate.to_dict(), "blocks": _counts(best.candidate, space)},
        "host_bytes": host_bytes(outcome),
        "host_ram": {
            "limit_bytes": outcome.host.host_ram_bytes if outcome.host else None,
            "limit_source": outcome.host_ram_source,
            "pinned_bytes": outcome.host.pinned_bytes if outcome.host else None,
            "streamed_bytes": outcome.host.streamed_bytes if outcome.host else None,
        },
        "weight_bytes": outcome.inventory.total_bytes,
        "step_ms": pred.step_ms,
        "peak_vram_bytes": pred.peak_vram_bytes,
        "device_weight_bytes": pred.device_weight_bytes,
        "lower_bound_ms": pred.lower_bound_ms,
        "ratio_to_bound": pred.step_ms / pred.lower_bound_ms if pred.lower_bound_ms > 0 else None,
        "measured_step_ms": outcome.measured_step_ms,
        "policies": [
            {
                "policy": p.value,
                "peer": p.peer,
                "fits": s is not None and pinned.get(p, 0) <= limit,  # VRAM and host RAM
                "fits_vram": s is not None,
                "pinned_bytes": pinned.get(p),
                "step_ms": s.step_ms if s else None,
                "peak_vram_bytes": s.peak_vram_bytes if s else None,
                "placement": s.candidate.to_dict() if s else None,
            }
            for p, s in res.policies
        ],
        "pareto": [
            {"peak_vram_bytes": s.peak_vram_bytes, "step_ms": s.step_ms, "placement": s.candidate.to_dict()}
            for s in res.pareto
        ],
        "search": {"trials": res.trials, "seconds": res.seconds, "min_budget_bytes": res.min_budget_bytes},
        "experts": _experts_dict(outcome.experts),
        "calibration": _calibration_dict(outcome, space),
    }


def _calibration_dict(outcome: TuneOutcome, space) -> dict | None:
    """The profile's calibration and the plan's calibrated step time (None: a reference profile)."""
    cal = outcome.source.calibration
    if cal is None:
        return None
    model = CostModel(outcome.inventory, outcome.source.profiles[outcome.chosen.candidate.cfg])
    step = cal.step_ms(model, space.layout(outcome.chosen.candidate), outcome.prediction.step_ms)
    return {**cal.to_dict(), "step_ms": step}


def _experts_dict(experts) -> dict | None:
    from planner.experts import experts_to_dict

    return experts_to_dict(experts) if experts is not None else None


def _counts(c: Candidate, space) -> dict:
    return {
        run.kind: {"resident": c.count(run.kind), "streamed": len(run.positions) - c.count(run.kind)}
        for run in space.kinds
    }
