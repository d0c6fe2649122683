"""`planner analyze`: measure each block's sensitivity to its storage format on real weights,
over calibration prompts, and store the table (beside a profile where one is named)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from runtime.analysis.convert import FORMATS
from runtime.dtypes import DType, compute_dtype
from runtime.errors import UserError


@dataclasses.dataclass(frozen=True)
class AnalyzeRequest:
    model_id: str
    weights: Path  # a local diffusers pipeline folder
    prompts: tuple[str, ...]
    steps: int  # denoising steps per prompt: each is one calibration forward
    height: int
    width: int
    seed: int = 0
    guidance: float | None = None  # None: the model's
    formats: tuple[DType, ...] = FORMATS
    device: str | None = None
    profile_id: int | None = None
    db_url: str | None = None
    stats: Path | None = None  # activation statistics (`apply --record-stats`): prune options
    prune: tuple[float, ...] = ()  # fractions of each MLP's least active units to try removing


def read_prompts(path: Path) -> tuple[str, ...]:
    """One prompt per non-empty line of a UTF-8 text file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--prompts {path} cannot be read ({e}): give a UTF-8 text file with "
                        f"one prompt per line") from None
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not prompts:
        raise UserError(f"--prompts {path} holds no prompt: write one prompt per line")
    return prompts


def analyze(req: AnalyzeRequest):
    """(the table, its id in the store). The denoiser runs whole on `req.device`."""
    from db.store import open_store
    from runtime.analysis.sensitivity import block_sensitivity, record_calibration
    from runtime.analysis.stats import load_stats
    from runtime.engine.device import resolve_device
    from runtime.catalog import get_model
    from runtime.families import get_family
    from runtime.generate import load_pipeline

    if req.steps < 1:
        raise UserError(f"--steps {req.steps} is not usable: give 1 or more")
    if any(not 0 < f < 1 for f in req.prune):
        raise UserError(f"--prune {', '.join(map(str, req.prune))}: give fractions between 0 and 1")
    if req.prune and req.stats is None:
        raise UserError("--prune removes the least active units that --stats FILE recorded: "
                        "give --stats (from `planner apply --record-stats`)")
    stats = load_stats(req.stats) if req.stats is not None else None
    spec = get_model(req.model_id)
    with open_store(req.db_url):  # a locked or out-of-date store fails before any work
        pass
    adapter = get_family(spec.family)
    device = resolve_device(req.device)
    pipe = load_pipeline(adapter, req.weights, None, compute_dtype(spec.storage_dtype).torch())
    denoiser = getattr(pipe, adapter.denoiser).to(device)
    pipe.vae.to(device)
    workload = spec.workload(f"{req.width}x{req.height}")
    guidance = req.guidance if req.guidance is not None else spec.default_guidance
    calibration = record_calibration(pipe, adapter, req.prompts, workload, req.steps, guidance,
                                     req.seed, device)
    table = block_sensitivity(denoiser, adapter.blocks(denoiser), calibration, req.formats,
                              model_id=req.model_id, stats=stats, prune=req.prune)
    with open_store(req.db_url) as store:
        analysis_id = store.save_block_analysis(table, req.profile_id)
    return table, analysis_id
