"""The same budget in other storage formats: what bf16, fp8 or a quantized checkpoint would step.

`planner tune --quant q4_k` plans for a Q4_K GGUF file the user may not have yet; the question
behind it is whether that download is worth it. So the tuned plan is shown next to the best
plan the same search finds, at the same budget on the same reference GPU, for the other
formats. Only reference profiles are compared (a stored profile was measured in one format).
"""

from __future__ import annotations

import dataclasses

from runtime.dtypes import DType
from runtime.errors import UserError

COMPARED = (DType.BF16, DType.FP8)


@dataclasses.dataclass(frozen=True)
class FormatRow:
    storage: DType
    fits: bool
    step_ms: float | None
    peak_vram_bytes: int | None
    weight_bytes: int  # the whole transformer in this format (the download)
    cast: str | None  # the streamed blocks' cast mode of the best plan

    def to_dict(self) -> dict:
        return {
            "storage": self.storage.value, "fits": self.fits, "step_ms": self.step_ms,
            "peak_vram_bytes": self.peak_vram_bytes, "weight_bytes": self.weight_bytes,
            "cast": self.cast,
        }


def compare_formats(req, formats=COMPARED) -> tuple[FormatRow, ...]:
    """The best predicted step of `req` (a `planner.app.request.TuneRequest` with a reference GPU)
    in each of `formats` other than its own, searched with the request's settings."""
    from planner.search import Settings, search
    from planner.app.profiles import resolve_profiles
    from runtime.inventory import inventory

    if req.gpu is None:
        return ()
    rows = []
    for storage in formats:
        if storage is req.storage_dtype:
            continue
        other = dataclasses.replace(req, storage_dtype=storage, verify=0, weights=None)
        source = resolve_profiles(other)
        inv = inventory(req.model_id, storage)
        settings = Settings(req.budget_bytes, trials=req.trials, timeout_s=req.timeout_s, seed=req.seed)
        try:
            best = search(inv, source.profiles, settings).best
        except UserError:  # not even everything streamed fits this budget in this format
            rows.append(FormatRow(storage, False, None, None, inv.total_bytes, None))
            continue
        rows.append(FormatRow(storage, True, best.step_ms, best.peak_vram_bytes, inv.total_bytes,
                              best.candidate.cast.value))
    return tuple(rows)
