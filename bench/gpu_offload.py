"""The product under VRAM budgets: tuned plans from a measured profile, run for real, vs the rest.

The model has random weights of the right shapes and dtypes (timing does not depend on values),
drawn on the GPU tensor by tensor, kept on the host. This machine is profiled once with our
profiler (stored in the bench's own store, `--db`). Then, for each budget:
  tuned            `planner.app.tune.tune` on that profile at the budget, run through our engine
  resident-prefix  the search's peer policies at the same budget (`SearchResult.policies`:
  spread           ComfyUI/BlockSwap's first-N-resident, evenly spread residents), same engine
and for each of those: predicted and measured step time and peak VRAM, their ratio, the ratio to
the real floor at the budget (`CostModel.lower_bound_ms`, planner/floor.py: no placement can
step faster) and whether the output is bitwise the whole model's (where the arithmetic is the
same: storage that needs no cast). Measured once, and set against every budget by their peak:
  whole model      the plain model on the device, the output every plan is compared with
  diffusers        enable_group_offload, block_level (1 block per group) and leaf_level, both
                   use_stream=True (they stream everything, whatever the budget; CUDA only)
Every run of ours is recorded in the store, so the profile's calibration from them
(planner/calibration.py) is reported too (in-sample: calibrated on the runs it describes).

A step is `forwards_per_step` forwards timed back to back with no host synchronisation between
them (CUDA events on the compute stream; `perf_counter` on the CPU), as a denoising loop runs
them and as the cost model's steady step predicts; the median over `--steps` steps after one
warm-up forward. On CUDA each budget is enforced with torch.cuda.set_per_process_memory_fraction
and the peak is torch.cuda.max_memory_allocated. On the CPU there is no allocator peak, no
memory fraction and no CUDA stream: those are marked skipped in the JSON, and the engine's own
count of the device bytes it placed stands next to the predicted device weight bytes.

    python bench/gpu_offload.py [--model flux-dev] [--budgets 8,12,16,24] [--steps 3]
                                [--policies tuned,resident-prefix,spread] [--skip-diffusers]
    python bench/gpu_offload.py --model tiny-flux --device cpu --resolution 64x64 --budgets 0.5x,0.8x

Budgets: a bare number is GiB, a size with a unit (700KiB, 1.5GiB) is that size, and 0.5x is
that fraction of the whole model's predicted peak. Results: bench/results/gpu_offload_<device>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

OURS = ("tuned", "resident-prefix", "spread")
_STARTED = time.perf_counter()


def progress(text: str) -> None:
    print(f"[{time.perf_counter() - _STARTED:7.1f} s] {text}", flush=True)


# ------------------------------------------------------------ budgets (no torch)


@dataclasses.dataclass(frozen=True)
class BudgetSpec:
    text: str
    bytes: int | None = None  # an absolute size
    fraction: float | None = None  # of the whole model's predicted peak

    def resolve(self, whole_peak_bytes: int) -> int:
        return self.bytes if self.bytes is not None else int(self.fraction * whole_peak_bytes)


def parse_budgets(text: str) -> tuple[BudgetSpec, ...]:
    """`8,12` (GiB), `700KiB,1.5GiB` (sizes), `0.5x,0.8x` (fractions of the whole model's peak)."""
    from planner.budget import parse_size
    from runtime.errors import UserError

    specs = []
    for item in (part.strip() for part in text.split(",")):
        if item.endswith("x"):
            try:
                fraction = float(item[:-1])
            except ValueError:
                fraction = -1.0
            if not 0 < fraction <= 4:
                raise UserError(f"--budgets {item!r} is not a fraction: write it like 0.5x (0 to 4 times the whole model's peak)")
            specs.append(BudgetSpec(item, fraction=fraction))
        elif item.replace(".", "", 1).isdigit():
            specs.append(BudgetSpec(item, bytes=parse_size(item + "GiB", "--budgets")))
        else:
            specs.append(BudgetSpec(item, bytes=parse_size(item, "--budgets")))
    if not specs:
        raise UserError("--budgets is empty: give sizes like 8,12,16,24 (GiB)")
    return tuple(specs)


# ------------------------------------------------------------ rows (no torch)


@dataclasses.dataclass(frozen=True)
class Measured:
    """One configuration run for real."""

    step_ms: float | None  # None: it did not run (error says why)
    forward_ms: tuple[float, ...] = ()
    peak_bytes: int | None = None  # None where the device has no allocator peak (CPU)
    engine_device_bytes: int | None = None  # what our engine says it placed (OffloadStats)
    bitwise_equal: bool | None = None  # output vs the whole model's
    apply_s: float | None = None
    remove_s: float | None = None
    error: str | None = None


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def plan_row(policy: str, plan, prediction, measured: Measured, floor_ms: float,
             identical_arithmetic: bool, budget_bytes: int) -> dict:
    """One of ours at one budget: predicted vs measured, and against the floor."""
    return {
        "policy": policy,
        "fits": True,
        "streamed_blocks": len(plan.streamed),
        "resident_blocks": len(plan.resident),
        "prefetch_depth": plan.prefetch_depth,
        "host_memory": plan.host_memory.value,
        "casts": sorted({b.cast.value for b in plan.blocks}),
        "predicted_step_ms": prediction.step_ms,
        "measured_step_ms": measured.step_ms,
        "measured_over_predicted": _ratio(measured.step_ms, prediction.step_ms),
        "predicted_synchronized_step_ms": prediction.synchronized_step_ms,
        "predicted_peak_bytes": prediction.peak_vram_bytes,
        "measured_peak_bytes": measured.peak_bytes,
        "peak_measured_over_predicted": _ratio(measured.peak_bytes, prediction.peak_vram_bytes),
        "predicted_device_weight_bytes": prediction.device_weight_bytes,
        "engine_device_weight_bytes": measured.engine_device_bytes,
        "budget_bytes": budget_bytes,
        "floor_ms": floor_ms,
        "predicted_over_floor": _ratio(prediction.step_ms, floor_ms),
        "measured_over_floor": _ratio(measured.step_ms, floor_ms),
        "identical_arithmetic": identical_arithmetic,
        "bitwise_equal": measured.bitwise_equal,
        "forward_ms": list(measured.forward_ms),
        "apply_s": measured.apply_s,
        "remove_s": measured.remove_s,
        "error": measured.error,
    }


def reference_row(name: str, measured: Measured | None, budget: int, floor_ms: float, skipped: str | None) -> dict:
    """The whole model or diffusers at one budget: it fits where its measured peak does."""
    if measured is None:
        return {"method": name, "skipped": skipped}
    fits = None if measured.peak_bytes is None else measured.peak_bytes <= budget
    return {
        "method": name,
        "measured_step_ms": measured.step_ms,
        "measured_peak_bytes": measured.peak_bytes,
        "fits_budget": fits,
        "measured_over_floor": _ratio(measured.step_ms, floor_ms) if fits is not False else None,
        "bitwise_equal": measured.bitwise_equal,
        "error": measured.error,
    }


def step_of(forward_ms, forwards_per_step: int) -> float:
    """Median step over whole steps of `forwards_per_step` consecutive forwards."""
    steps = [sum(forward_ms[i:i + forwards_per_step])
             for i in range(0, len(forward_ms) - forwards_per_step + 1, forwards_per_step)]
    return statistics.median(steps)


# ------------------------------------------------------------ running


class Runner:
    """The model, its inputs and the whole model's output, on one device."""

    def __init__(self, model, adapter, workload, device, steps: int, compute_dtype) -> None:
        import torch

        self.model = model
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.workload = workload
        self.steps = steps
        self.inputs = adapter.model_inputs(model, workload, self.device, compute_dtype)
        self.reference = None  # the whole model's output, on the host
        self.last_output = None  # the output of the last configuration measured, on the host

    def forwards(self) -> tuple[tuple[float, ...], object]:
        """One warm-up forward, then `steps` steps of forwards back to back: (ms each, output)."""
        import torch

        n = self.steps * self.workload.forwards_per_step
        with torch.inference_mode():
            out = self.model(**self.inputs)[0]
            if self.cuda:
                torch.cuda.synchronize(self.device)
                stream = torch.cuda.current_stream(self.device)
                marks = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
                marks[0].record(stream)
                for i in range(n):
                    self.model(**self.inputs)
                    marks[i + 1].record(stream)
                torch.cuda.synchronize(self.device)
                times = tuple(a.elapsed_time(b) for a, b in zip(marks, marks[1:]))
            else:
                stamps = [time.perf_counter()]
                for _ in range(n):
                    self.model(**self.inputs)
                    stamps.append(time.perf_counter())
                times = tuple((b - a) * 1000.0 for a, b in zip(stamps, stamps[1:]))
        return times, out.detach().to("cpu")

    def start_peak(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int | None:
        import torch

        return int(torch.cuda.max_memory_allocated(self.device)) if self.cuda else None

    def measure(self, setup, teardown) -> Measured:
        """Time `setup()` (returns a handle or None), the forwards, then `teardown(handle)`."""
        import torch

        self.start_peak()
        started = time.perf_counter()
        handle, times, out, error, engine = None, (), None, None, None
        try:
            handle = setup()
            applied = time.perf_counter() - started
            engine = handle.stats.device_weight_bytes if hasattr(handle, "stats") else None
            times, out = self.forwards()
            peak = self.peak()
        except Exception as e:  # out of memory under a budget, or a method that cannot run here
            applied = time.perf_counter() - started
            peak, error = None, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        removed = time.perf_counter()
        teardown(handle)
        removed = time.perf_counter() - removed
        equal = None if out is None or self.reference is None else bool(torch.equal(out, self.reference))
        step = step_of(times, self.workload.forwards_per_step) if times else None
        self.last_output = out
        self.start_peak()
        return Measured(step, times, peak, engine, equal, applied, removed, error)

    def memory_fraction(self, budget: int | None) -> None:
        if not self.cuda:
            return
        import torch

        total = torch.cuda.get_device_properties(self.device).total_memory
        torch.cuda.set_per_process_memory_fraction(1.0 if budget is None else min(1.0, budget / total), self.device)


def run_whole(runner: Runner, plain_on_device: bool, whole_plan) -> Measured:
    """The whole model on the device; its output becomes the reference."""
    import torch

    from runtime.apply import apply_plan

    def setup():
        if plain_on_device:
            torch.nn.Module.to(runner.model, runner.device)
            return None
        return apply_plan(runner.model, whole_plan, runner.device)  # storage that needs its cast

    def teardown(handle):
        if handle is not None:
            handle.remove()
        elif plain_on_device and runner.cuda:
            torch.nn.Module.to(runner.model, "cpu")

    return runner.measure(setup, teardown)


def run_plan(runner: Runner, plan) -> Measured:
    from runtime.apply import apply_plan

    return runner.measure(lambda: apply_plan(runner.model, plan, runner.device),
                          lambda h: h.remove() if h is not None else None)


def run_diffusers(runner: Runner, offload_type: str) -> Measured:
    """diffusers group offloading with a side stream; its hooks are taken off afterwards."""
    import torch

    def setup():
        kwargs = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
        runner.model.enable_group_offload(onload_device=runner.device, offload_device=torch.device("cpu"),
                                          offload_type=offload_type, use_stream=True, **kwargs)

    def teardown(_):
        for module in runner.model.modules():
            registry = getattr(module, "_diffusers_hook", None)
            if registry is not None:
                for name in list(registry.hooks):
                    registry.remove_hook(name, recurse=False)
                del module._diffusers_hook
        torch.nn.Module.to(runner.model, "cpu")

    return runner.measure(setup, teardown)


# ------------------------------------------------------------ the benchmark


def ours_at(budget: int, profile_id: int, args, inv) -> list[tuple[str, object, object]]:
    """(policy, plan, prediction) of the tuned plan and the peer policies at `budget` (plan
    None where a policy's smallest form does not fit)."""
    from planner.policies import Policy
    from planner.app.placing import plan_of
    from planner.app.request import TuneRequest
    from planner.app.tune import tune

    req = TuneRequest(model_id=args.model, budget_bytes=budget, workload=args.workload,
                      storage_dtype=inv.storage_dtype, profile_id=profile_id, trials=args.trials,
                      seed=0, db_url=args.db, workload_from_profile=True)
    outcome = tune(req)
    found = [("tuned", outcome.plan, outcome.prediction)] if "tuned" in args.policies else []
    peers = dict(outcome.result.policies)
    for policy in (p for p in (Policy.PREFIX, Policy.SPREAD) if p.value in args.policies):
        scored = peers.get(policy)
        if scored is None:  # its row says so
            found.append((policy.value, None, None))
            continue
        plan, prediction = plan_of(inv, outcome.source, scored, budget)
        found.append((policy.value, plan, prediction))
    return found


def main(argv: list[str] | None = None) -> int:
    import torch

    from runtime.errors import UserError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="flux-dev")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budgets", default="8,12,16,24", help="GiB, sizes (700KiB) or fractions (0.5x)")
    parser.add_argument("--resolution", default=None, help="WIDTHxHEIGHT (default: the model's)")
    parser.add_argument("--dtype", default="", help="storage dtype (default: the model's)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--trials", type=int, default=160)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--policies", default=",".join(OURS), help=f"ours to run, of {','.join(OURS)}")
    parser.add_argument("--skip-diffusers", action="store_true")
    parser.add_argument("--db", default=None, help="store URL (default: a new SQLite file in a temp dir)")
    parser.add_argument("-o", "--output", default=None)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import torch

    from runtime.catalog import get_model
    from runtime.dtypes import DType
    from runtime.errors import UserError

    spec = get_model(args.model)
    args.budget_specs = parse_budgets(args.budgets)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: this machine has no CUDA device; use --device cpu")
    args.policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    if not args.policies or set(args.policies) - set(OURS):
        raise UserError(f"--policies {','.join(args.policies)!r} names none or others than ours: "
                        f"give some of {','.join(OURS)}")
    if args.steps < 1:
        raise UserError(f"--steps {args.steps} is not a step count: give 1 or more")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.storage = DType.parse(args.dtype) if args.dtype else spec.storage_dtype
    args.workload = spec.workload(args.resolution)
    args.db = args.db or f"sqlite:///{Path(tempfile.mkdtemp(prefix='gpu_offload_')) / 'store.db'}"
    result = benchmark(args, spec)
    out = Path(args.output) if args.output else (
        Path(__file__).resolve().parent / "results" / f"gpu_offload_{_slug(result['device'])}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["budgets"]:
        tuned = next((r for r in row["ours"] if r["policy"] == "tuned" and r.get("measured_step_ms")), None)
        if tuned:
            progress(f"{row['budget']:>8s}: tuned {tuned['measured_step_ms']:.2f} ms measured, "
                     f"x{tuned['measured_over_predicted']:.3f} its prediction, x{tuned['measured_over_floor']:.3f} "
                     f"the floor; {row['verdict']}")
    progress(f"wrote {out}")
    return 0


def benchmark(args, spec) -> dict:
    """Everything the results file holds (see the module doc)."""
    from planner.app.calibration import load_calibration

    bench = prepare(args, spec)
    runner = bench.runner
    progress("whole model on the device")
    whole = run_whole(runner, bench.identical, bench.whole_plan)
    runner.reference = runner.last_output  # what every plan's output is compared with
    progress(f"  {_ms(whole.step_ms)} ms/step, peak {whole.peak_bytes}")
    cache: dict = {}  # layout -> Measured: a plan two policies share runs once
    rows = [budget_row(bench, args, spec_b, cache) for spec_b in args.budget_specs]
    diffusers_runs, skipped = run_all_diffusers(runner, args.skip_diffusers)
    for row in rows:
        refs = [reference_row("whole model", whole, row["budget_bytes"], row["floor_ms"], None)]
        refs[0]["predicted_fits"] = bench.whole_peak <= row["budget_bytes"]
        for kind in ("block_level", "leaf_level"):
            refs.append(reference_row(f"diffusers {kind}", diffusers_runs.get(kind), row["budget_bytes"],
                                      row["floor_ms"], skipped))
        row["references"] = refs
    calibration = load_calibration(args.db, bench.profile, bench.inv)
    return _result(args, bench, whole, diffusers_runs, rows, calibration, skipped)


@dataclasses.dataclass(frozen=True)
class Bench:
    device: str
    inv: object
    profile: object
    profile_s: float
    reused: bool
    cost: object  # planner.costmodel.CostModel of the profile
    whole_plan: object  # every block resident
    whole_peak: int  # its predicted peak: what fractional budgets are fractions of
    identical: bool  # storage needs no cast: every plan does the whole model's arithmetic
    runner: Runner


def prepare(args, spec) -> Bench:
    """Random weights, this device profiled (or its stored profile), the whole-model plan."""
    import torch

    from planner.costmodel import CostModel
    from planner.explain import layout_of
    from planner.app.stored import stored_or_measured
    from runtime.dtypes import compute_dtype
    from runtime.families import get_family
    from runtime.inventory import inventory
    from runtime.plan import Target, build_plan
    from runtime.random_weights import random_model

    device = args.device
    if device == "cuda":
        device = f"cuda:{torch.cuda.current_device()}"
    cuda = device.startswith("cuda")
    progress(f"{args.model} ({args.storage.value}) at {args.workload.resolution} on {device}: random weights")
    model = random_model(args.model, args.storage, fill_device=device if cuda else None)
    inv = inventory(args.model, args.storage)
    progress("profiling this device with the profiler")
    started = time.perf_counter()
    profile, reused = stored_or_measured(
        args.model, args.workload, args.storage, device, args.db,
        progress=lambda stage, done, total: done == total and progress(f"  {stage}: {total} measured"))
    profile_s = time.perf_counter() - started
    cost = CostModel(inv, profile)
    whole_plan = build_plan(inv, set(), workload=profile.workload, target=Target(profile.machine.gpu_name, 1 << 50))
    whole_peak = cost.peak_bytes(layout_of(whole_plan, inv))
    progress(f"profile {profile.id}{' (stored)' if reused else ''} in {profile_s:.1f} s: pinned "
             f"{profile.bandwidth.pinned_under_compute_gbps:.1f} GB/s under compute; whole model predicted "
             f"peak {whole_peak / 2**20:.1f} MiB")
    runner = Runner(model, get_family(spec.family), profile.workload, device, args.steps,
                    compute_dtype(args.storage).torch())
    return Bench(device, inv, profile, profile_s, reused, cost, whole_plan, whole_peak,
                 not args.storage.casts, runner)


def budget_row(bench: Bench, args, spec_b: BudgetSpec, cache: dict) -> dict:
    """Tune at one budget and run the tuned plan and the peer policies under it."""
    from planner.explain import layout_of

    budget = spec_b.resolve(bench.whole_peak)
    floor = bench.cost.lower_bound_ms(budget)
    row = {"budget": spec_b.text, "budget_bytes": budget, "floor_ms": floor, "ours": []}
    progress(f"budget {spec_b.text} = {budget / 2**20:.1f} MiB: floor {floor:.2f} ms/step; tuning")
    try:
        found = ours_at(budget, bench.profile.id, args, bench.inv)
    except Exception as e:  # a budget no plan fits: its row says so
        progress(f"  no plan: {e}")
        return {**row, "error": str(e)}
    bench.runner.memory_fraction(budget)
    try:
        for policy, plan, prediction in found:
            if plan is None:
                row["ours"].append({"policy": policy, "fits": False})
                progress(f"  {policy:16s} does not fit")
                continue
            key = layout_of(plan, bench.inv)
            if key not in cache:
                cache[key] = run_plan(bench.runner, plan)
                _record(args.db, plan, cache[key], bench.device, args.steps)
            m = cache[key]
            row["ours"].append(plan_row(policy, plan, prediction, m, floor, bench.identical, budget))
            progress(f"  {policy:16s} predicted {prediction.step_ms:9.2f} measured {_ms(m.step_ms)} ms/step; "
                     f"{len(plan.streamed)} streamed, depth {plan.prefetch_depth}; bitwise {m.bitwise_equal}"
                     + (f"; {m.error}" if m.error else ""))
    finally:
        bench.runner.memory_fraction(None)
    return {**row, "verdict": verdict(row["ours"])}


def verdict(rows: list[dict]) -> dict | None:
    """The issue's targets for the tuned plan: within 3 % of its prediction, within 1.05x the floor."""
    tuned = next((r for r in rows if r["policy"] == "tuned" and r.get("measured_step_ms")), None)
    if tuned is None:
        return None
    return {"tuned_within_3pct_of_prediction": abs(tuned["measured_over_predicted"] - 1) <= 0.03,
            "tuned_within_1_05x_floor": tuned["measured_over_floor"] <= 1.05,
            "peak_within_3pct": None if tuned["peak_measured_over_predicted"] is None
            else abs(tuned["peak_measured_over_predicted"] - 1) <= 0.03,
            "peak_within_budget": None if tuned["measured_peak_bytes"] is None
            else tuned["measured_peak_bytes"] <= tuned["budget_bytes"]}


def run_all_diffusers(runner: Runner, skip: bool) -> tuple[dict, str | None]:
    """diffusers block- and leaf-level group offloading, once each (CUDA only)."""
    if not runner.cuda:
        return {}, "diffusers group offloading with use_stream=True needs CUDA streams"
    if skip:
        return {}, "--skip-diffusers"
    runs = {}
    for kind in ("block_level", "leaf_level"):
        progress(f"diffusers group offload, {kind}, use_stream=True")
        runs[kind] = run_diffusers(runner, kind)
        progress(f"  {_ms(runs[kind].step_ms)} ms/step, peak {runs[kind].peak_bytes}")
    return runs, None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _record(db: str, plan, m: Measured, device: str, steps: int) -> None:
    """Keep a measured run of ours in the store: it feeds the profile's calibration."""
    if m.step_ms is None:
        return
    from db.store import open_store
    from planner.app.runs import device_name

    with open_store(db) as store:
        store.record_run(store.save_plan(plan), m.step_ms, m.peak_bytes or 0, device, workload=plan.workload,
                         steps=steps, gpu_name=device_name(device))


def _result(args, bench: Bench, whole: Measured, diffusers_runs: dict, rows: list, calibration,
            skipped: str | None) -> dict:
    import diffusers
    import optuna
    import torch

    from runtime.version import TOOL_VERSION

    cuda = bench.runner.cuda
    profile, bw = bench.profile, bench.profile.bandwidth
    return {
        "benchmark": "gpu_offload",
        "device": torch.cuda.get_device_name(torch.device(bench.device)) if cuda else "cpu",
        "device_kind": "cuda" if cuda else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "versions": {"offload_planner": TOOL_VERSION, "torch": torch.__version__, "cuda": torch.version.cuda,
                     "diffusers": diffusers.__version__, "optuna": optuna.__version__,
                     "python": platform.python_version()},
        "command": " ".join(["python", "bench/gpu_offload.py", *args.argv]),
        "model": args.model, "storage_dtype": args.storage.value,
        "workload": {**dataclasses.asdict(profile.workload), "cfg": profile.workload.cfg.value},
        "steps": args.steps, "trials": args.trials,
        "skipped": {} if cuda else {
            "diffusers": skipped, "memory_fraction": "CUDA only: budgets are not enforced on the CPU",
            "peak": "no allocator peak on the CPU: engine_device_weight_bytes stands next to the prediction",
        },
        "profile": {"id": profile.id, "reused": bench.reused, "seconds": bench.profile_s,
                    "pinned_gbps": bw.pinned_gbps, "pinned_under_compute_gbps": bw.pinned_under_compute_gbps,
                    "pageable_gbps": bw.pageable_gbps, "copy_overhead_us": bw.copy_overhead_us,
                    "workspace_bytes": profile.workspace_bytes,
                    "activation_peak_bytes": profile.activation_peak_bytes},
        "whole_model": {"predicted_peak_bytes": bench.whole_peak, **dataclasses.asdict(whole)},
        "diffusers": {k: dataclasses.asdict(m) for k, m in diffusers_runs.items()} or {"skipped": skipped},
        "budgets": rows,
        "calibration": None if calibration is None else {
            **calibration.to_dict(), "note": "in-sample: from this benchmark's own runs of ours"},
    }


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


if __name__ == "__main__":
    raise SystemExit(main())
