"""JSON as our data files must be: no key twice in one object, no NaN or Infinity, and no
number that overflows to one (`1e999`).

One parser for plan files, safetensors headers and their metadata, NF4 quant states and
diffusers index and config files; each caller turns the typed errors below into its own message
naming its file.
"""

from __future__ import annotations

import json
import math
from typing import Any


class StrictJsonError(ValueError):
    """Valid JSON syntax that a data file may not hold."""


class DuplicateKey(StrictJsonError):
    def __init__(self, key: str) -> None:
        super().__init__(f"key {key!r} appears twice in one object")
        self.key = key


class NonFiniteConstant(StrictJsonError):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not a finite number")
        self.name = name


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def _no_constant(name: str):
    raise NonFiniteConstant(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise NonFiniteConstant(text[:40])
    return value


def loads_strict(text: str | bytes) -> Any:
    """Parse `text`. Raises DuplicateKey or NonFiniteConstant for what a data file may not hold,
    and ValueError (JSONDecodeError, over-long integers) or RecursionError for broken JSON."""
    return json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_no_constant,
                      parse_float=_finite_float)
