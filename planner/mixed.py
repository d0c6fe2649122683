"""Mixed plans: which blocks to store in which format, within a summed predicted error.

Pure library. Inputs: each block's relative output error per format (`planner analyze`'s
table, as a mapping) and the bytes each format saves per block; output: assignments
`{block: format}` whose summed error stays under a budget, saving as many bytes as a greedy
multiple-choice knapsack finds (options by bytes saved per unit of error; a block's format is
replaced by a more compressive one while the sum allows). The summed error is a first-order
prediction (each block's error measured alone). `tune --max-error` searches the placement of
a few such assignments (the budget and fractions of it) and keeps the fastest.

A profile describes the model's own blocks; for a mixed inventory its blocks take the mixed
bytes and the on-device conversion time of their formats (the reference profile's estimate
from the GPU's memory bandwidth), so the cost model prices the packed transfer and the
dequantization both.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from profiler.reference import cast_ms_of
from runtime.dtypes import DType

LEVELS = (1.0, 0.5, 0.25, 0.125)  # fractions of the error budget searched
DEFAULT_MEMORY_GBPS = 500.0  # device memory bandwidth where the profile's GPU is not known


@dataclasses.dataclass(frozen=True)
class Assignment:
    formats: Mapping[str, object]  # block -> option (a format, or pruning: any hashable key)
    predicted_error: float  # the sum of the chosen blocks' errors
    saved_bytes: int


def assign_formats(
    errors: Mapping[str, Mapping[object, float]], saved: Mapping[str, Mapping[object, int]],
    max_error: float,
) -> Assignment:
    """Options (formats, pruning) for blocks, most bytes saved first per unit of error, summed
    error <= max_error."""
    options = sorted(
        ((block, fmt, err, saved[block][fmt]) for block, by_fmt in errors.items()
         for fmt, err in by_fmt.items() if saved.get(block, {}).get(fmt, 0) > 0),
        key=lambda o: (-(o[3] / max(o[2], 1e-30)), o[0], _name(o[1])),
    )
    chosen: dict[str, tuple[DType, float, int]] = {}
    total = 0.0
    for block, fmt, err, gain in options:
        old = chosen.get(block)
        delta = err - (old[1] if old else 0.0)
        if (old is None or gain > old[2]) and total + delta <= max_error:
            chosen[block] = (fmt, err, gain)
            total += delta
    return Assignment({b: c[0] for b, c in chosen.items()}, total,
                      sum(c[2] for c in chosen.values()))


def _name(option) -> str:
    return getattr(option, "name", None) or getattr(option, "value", None) or str(option)


def assignments(errors, saved, max_error: float) -> list[Assignment]:
    """One assignment per level of the error budget (distinct ones, largest budget first)."""
    out: list[Assignment] = []
    for level in LEVELS:
        a = assign_formats(errors, saved, max_error * level)
        if a.formats and all(dict(a.formats) != dict(b.formats) for b in out):
            out.append(a)
    return out


def profile_for(profile, inventory, memory_gbps: float = DEFAULT_MEMORY_GBPS):
    """`profile` describing `inventory`'s (mixed) blocks: their bytes, and for blocks holding
    fp8 or quantized tensors the estimated on-device conversion time."""
    blocks = tuple(
        dataclasses.replace(p, bytes=b.bytes, cast_ms=p.cast_ms if p.bytes == b.bytes
                            else cast_ms_of(b.bytes_by_dtype, memory_gbps))
        for p, b in zip(profile.blocks, inventory.blocks)
    )
    return dataclasses.replace(profile, blocks=blocks)

