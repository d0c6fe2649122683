"""What `planner tune` is asked (`TuneRequest`, checked as it is built), where its profiles came
from (`ProfileSource`) and everything it found (`TuneOutcome`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Mapping

from planner.costmodel import Prediction
from planner.search import DEFAULT_TRIALS, Scored, SearchResult
from runtime.dtypes import DType
from runtime.errors import UserError
from runtime.plan import Plan
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
    between_trials: Callable[[], None] | None = None  # see planner.search.Settings
    seed: int = 0
    db_url: str | None = None
    verify: int = 0  # run this many best candidates on the GPU and keep the measured best
    fresh: bool = False  # measure this machine's GPU again even if a profile is stored
    host_ram_bytes: int | None = None  # pinned host RAM allowed; None: see `host_ram_limit`
    workload_from_profile: bool = False  # --profile without --resolution/--batch: the profile's
    weights: Path | None = None  # plan for this checkpoint's exact bytes (GGUF, NF4, safetensors)
    # search mixed plans (blocks in their own formats) whose summed predicted error, from the
    # newest `planner analyze` table, stays under this; None: one storage for every block
    max_error: float | None = None

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
        if self.max_error is not None and not self.max_error > 0:
            raise UserError(f"--max-error {self.max_error} is not usable: give a relative error "
                            f"above 0 (e.g. 0.05)")
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
    mixed: object = None  # planner.app.mixed.MixedChoice of a --max-error plan


def cfg_modes(workload: Workload) -> tuple[CfgMode, ...]:
    """CFG modes to search: the workload's own, which is how the model's diffusers pipeline
    runs guidance (the catalog's `cfg`). `planner apply` drives that pipeline and cannot
    change it (QwenImagePipeline and HunyuanImage's guider always run two forwards), so a
    plan in the other mode would be run, and timed, in a mode it was not made for."""
    return (workload.cfg,)
