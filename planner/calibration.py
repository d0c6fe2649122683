"""A measured profile's calibration, learned from the runs of the plans made from it.

A profile times blocks one at a time; a plan runs them all, with copies beside them, and the
cost model's prediction of that can miss by some percent (the H100 runs: +0.7 % to +11 %).
Every comparable run of a plan made from the profile (its own workload on the profile's GPU:
`planner tune --verify`, `planner apply`, `bench/gpu_offload.py` record them) is a measured
point: its step time over what the cost model predicts for that plan *now* (recomputed, so a
changed cost model is calibrated against itself, not against the numbers an older one stored).

    factor = median(measured / predicted) over the runs (one disturbed run does not move it)

Steps are copy-bound (the copy stream busier than the compute stream) or compute-bound, and the
two miss differently (copies and compute close is where the H100 16 GiB case missed most), so
each regime has its own factor once it has MIN_REGIME_RUNS runs; until then a step of that
regime takes the factor of all runs. A calibrated step time is the prediction times the factor
of its regime. The search itself still ranks by the uncalibrated cost model: `tune` and
`explain` report the calibrated figure next to it.

Peak VRAM is reported, not calibrated: the median measured/predicted peak over the runs that
measured one (a CPU run measures none). The budget check keeps the uncalibrated peak, so a few
runs never push a plan over a budget.

Derived on demand from the stored plans and runs: no table of its own, nothing to migrate.
"""

from __future__ import annotations

import dataclasses
import enum
import statistics

MIN_REGIME_RUNS = 2  # runs of one regime before it gets a factor of its own


class Regime(str, enum.Enum):
    COPY_BOUND = "copy-bound"  # the copy stream is busier than compute over a step
    COMPUTE_BOUND = "compute-bound"


@dataclasses.dataclass(frozen=True)
class RegimeFactor:
    regime: Regime
    runs: int
    factor: float | None  # median measured / predicted of its runs; None without runs


@dataclasses.dataclass(frozen=True)
class Calibration:
    """What the stored runs of one profile's plans say about its predictions."""

    profile_id: int | None
    gpu_name: str
    runs: int  # runs used
    factor: float  # median measured / predicted step over all of them (1.0 without runs)
    regimes: tuple[RegimeFactor, ...]
    peak_ratio: float | None  # median measured / predicted peak (information only)
    peak_runs: int
    skipped: int = 0  # comparable runs that could not be used (another GPU, workload or model)

    def factor_of(self, regime: Regime) -> tuple[float, str]:
        """(factor, where it comes from) for a step of `regime`."""
        own = next(r for r in self.regimes if r.regime is regime)
        if own.factor is not None and own.runs >= MIN_REGIME_RUNS:
            return own.factor, f"{own.runs} {regime.value} runs"
        return self.factor, f"all {self.runs} runs"

    def step_ms(self, model, layout, predicted_ms: float) -> float:
        """`predicted_ms` of `layout` under `model` (a CostModel of this profile), calibrated."""
        return predicted_ms * self.factor_of(regime_of(model, layout))[0]

    def describe(self) -> str:
        """One line for the user, e.g. "calibrated from 3 runs on NVIDIA H100 (x1.071)"."""
        if not self.runs:
            return "not calibrated: no measured run of a plan from this profile yet"
        return f"calibrated from {self.runs} run{'s' if self.runs != 1 else ''} on {self.gpu_name} (x{self.factor:.3f})"

    def to_dict(self) -> dict:
        return {
            "profile_id": self.profile_id,
            "gpu_name": self.gpu_name,
            "runs": self.runs,
            "factor": self.factor,
            "regimes": {r.regime.value: {"runs": r.runs, "factor": r.factor} for r in self.regimes},
            "peak_ratio": self.peak_ratio,
            "peak_runs": self.peak_runs,
            "skipped": self.skipped,
            "text": self.describe(),
        }


def regime_of(model, layout) -> Regime:
    """Copy-bound where the streamed blocks' copies take longer than the step's compute."""
    copy = sum(model.copy_ms(i, c, layout.host_memory)
               for i, (s, c) in enumerate(zip(layout.streamed, layout.casts)) if s)
    compute = model.profile.non_block_ms + sum(model.block_compute_ms(i, c) for i, c in enumerate(layout.casts))
    return Regime.COPY_BOUND if copy > compute else Regime.COMPUTE_BOUND


def calibrate(profile, inventory, runs) -> Calibration:
    """The calibration of `profile` from `runs` (db.store.ProfileRun) of plans made from it."""
    from planner.costmodel import CostModel
    from planner.explain import layout_of
    from profiler.gpus import normalize
    from runtime.errors import UserError

    model = CostModel(inventory, profile)
    gpu = profile.machine.gpu_name
    ratios: dict[Regime, list[float]] = {r: [] for r in Regime}
    peaks: list[float] = []
    skipped = 0
    for run in runs:
        plan = run.plan
        if normalize(run.gpu_name) != normalize(gpu) or plan.workload != profile.workload \
                or plan.model.storage_dtype != profile.storage_dtype:
            skipped += 1
            continue
        try:
            layout = layout_of(plan, inventory)
            step_ms, peak = model.step_ms(layout), model.peak_bytes(layout)
        except UserError:  # a plan of other blocks (another checkpoint's bytes)
            skipped += 1
            continue
        ratios[regime_of(model, layout)].append(run.step_ms / step_ms)
        if run.peak_vram_bytes > 0 and peak > 0:
            peaks.append(run.peak_vram_bytes / peak)
    every = [x for values in ratios.values() for x in values]
    return Calibration(
        profile_id=profile.id,
        gpu_name=gpu,
        runs=len(every),
        factor=statistics.median(every) if every else 1.0,
        regimes=tuple(RegimeFactor(r, len(v), statistics.median(v) if v else None) for r, v in ratios.items()),
        peak_ratio=statistics.median(peaks) if peaks else None,
        peak_runs=len(peaks),
        skipped=skipped,
    )
