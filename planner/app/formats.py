"""The same budgets in other storage formats: "fp8, Q8 or Q4 for 12 GB VRAM and 32 GB RAM?"

`planner tune --quant q4_k` plans for a Q4_K GGUF file the user may not have yet, and
`planner tune --formats` ranks every format: the question behind both is which download is
worth it. Each format is searched at the same VRAM budget on the same reference GPU, and its
best candidate is kept only where its whole run fits the host RAM too (`planner.host_ram`:
tiers included). Rows say whether the format is lossless (the publisher's own weights) and
which file the user needs. Only reference profiles are compared (a stored profile was measured
in one format).
"""

from __future__ import annotations

import dataclasses

from runtime.dtypes import DType
from runtime.errors import UserError

COMPARED = (DType.BF16, DType.FP8)
ALL_FORMATS = (DType.BF16, DType.FP8, DType.Q8_0, DType.Q6_K, DType.Q5_K, DType.Q4_K, DType.NF4)
RANKING_TRIALS = 40  # per format: seven searches stay under a minute or two


@dataclasses.dataclass(frozen=True)
class FormatRow:
    storage: DType
    fits: bool
    step_ms: float | None
    peak_vram_bytes: int | None
    weight_bytes: int  # the whole transformer in this format (the download)
    cast: str | None  # the streamed blocks' cast mode of the best plan
    host_peak_bytes: int | None = None  # the run's host RAM peak (None: not checked or no fit)
    disk_bytes: int = 0  # streamed bytes the plan keeps on the disk tier
    lossless: bool = False  # the publisher's weights as released
    file: str = ""  # what the user downloads
    why_not: str = ""  # where it does not fit: the one-sentence reason

    def to_dict(self) -> dict:
        return {
            "storage": self.storage.value, "fits": self.fits, "step_ms": self.step_ms,
            "peak_vram_bytes": self.peak_vram_bytes, "weight_bytes": self.weight_bytes,
            "cast": self.cast, "host_peak_bytes": self.host_peak_bytes, "disk_bytes": self.disk_bytes,
            "lossless": self.lossless, "file": self.file, "why_not": self.why_not,
        }


def file_of(model_id: str, storage: DType, released: DType) -> str:
    """The checkpoint a user needs to run `model_id` stored as `storage`."""
    if storage is released:
        return f"the released {model_id} checkpoint ({storage.value} safetensors)"
    if storage.is_fp8:
        return f"an fp8 single-file {model_id} transformer (e4m3 safetensors)"
    if storage is DType.NF4:
        return f"an NF4 (bitsandbytes 4-bit) {model_id} transformer"
    if storage.is_quantized:
        return f"a {storage.value.upper()} GGUF of the {model_id} transformer"
    return f"the {model_id} transformer cast to {storage.value} safetensors"


def compare_formats(req, host_ram: int, parts, formats=COMPARED, trials: int | None = None,
                    own: bool = False) -> tuple[FormatRow, ...]:
    """The best plan of `req` (a `planner.app.request.TuneRequest` with a reference GPU) in each
    of `formats` (its own storage too where `own`), searched with the request's settings and
    chosen within `host_ram` and `parts` (planner.host_peak.HostParts) as `tune` chooses."""
    if req.gpu is None:
        return ()
    return tuple(_row(req, storage, host_ram, parts, trials) for storage in formats
                 if own or storage is not req.storage_dtype)


def rank_formats(req, host_ram: int, parts) -> tuple[FormatRow, ...]:
    """Every format (`ALL_FORMATS`), those that fit both budgets first, fastest first."""
    rows = compare_formats(req, host_ram, parts, ALL_FORMATS, trials=min(req.trials, RANKING_TRIALS), own=True)
    return tuple(sorted(rows, key=lambda r: (not r.fits, r.step_ms or 0.0, r.weight_bytes)))


def rank_for_request(req) -> tuple[FormatRow, ...]:
    """`rank_formats` at the request's host RAM limit and pipeline parts (planner.app.profiles),
    as `tune` takes them: where no tune outcome holds them (a refusal)."""
    from planner.app.profiles import host_parts, host_ram_limit, request_inventory, resolve_profiles
    from runtime.catalog import get_model

    source = resolve_profiles(req)
    limit, said = host_ram_limit(req, source)
    experts = get_model(req.model_id).experts is not None
    return rank_formats(req, limit, host_parts(req, source, request_inventory(req), said, experts))


def fitting_formats_sentence(rows) -> str:
    """`fp8 (4.93 s/step, an fp8 single-file ...), q8_0 (...)`, or "" where none fits."""
    fits = [r for r in rows if r.fits]
    return ", ".join(f"{r.storage.value} ({r.step_ms / 1000:.2f} s/step: {r.file})" for r in fits)


def _row(req, storage: DType, host_ram: int, parts, trials: int | None) -> FormatRow:
    from planner.app.profiles import resolve_profiles
    from planner.host_ram import choose
    from planner.search import Settings, search
    from runtime.catalog import get_model
    from runtime.inventory import inventory

    released = get_model(req.model_id).storage_dtype
    info = dict(lossless=storage is released, file=file_of(req.model_id, storage, released))
    other = dataclasses.replace(req, storage_dtype=storage, verify=0, weights=None)
    source = resolve_profiles(other)
    inv = inventory(req.model_id, storage)
    settings = Settings(req.budget_bytes, trials=trials or req.trials, timeout_s=req.timeout_s, seed=req.seed,
                        between_trials=req.between_trials)
    try:
        result = search(inv, source.profiles, settings)
    except UserError as e:  # not even everything streamed fits this budget in this format
        return FormatRow(storage, False, None, None, inv.total_bytes, None, why_not=str(e), **info)
    experts = get_model(req.model_id).experts is not None
    try:
        choice = choose(inv, source.profiles, result, req.budget_bytes, host_ram,
                        dataclasses.replace(parts, parked_expert_bytes=inv.total_bytes if experts else 0),
                        experts=experts)
    except UserError as e:
        return FormatRow(storage, False, None, None, inv.total_bytes, None, why_not=str(e), **info)
    return FormatRow(storage, True, choice.step_ms, choice.scored.peak_vram_bytes, inv.total_bytes,
                     choice.scored.candidate.cast.value, choice.host.peak_bytes, choice.host.disk_bytes, **info)
