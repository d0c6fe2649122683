"""Memory sizes as users type them: `8GB`, `8 GiB`, `8192MiB`, `7.5G`, `8589934592`.

Decision: every unit is binary. `GB`, `G` and `GiB` all mean 2**30 bytes, `MB`/`M`/`MiB`
2**20, and so on. GPU makers sell an "8 GB" card holding 8 GiB (nvidia-smi shows 8188 MiB
of it), so `--vram 8GB` must mean that card, not 7.45 GiB of it. A bare number is bytes.
"""

from __future__ import annotations

import math
import re

from runtime.errors import UserError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10, "kb": 2**10, "kib": 2**10,
    "m": 2**20, "mb": 2**20, "mib": 2**20,
    "g": 2**30, "gb": 2**30, "gib": 2**30,
    "t": 2**40, "tb": 2**40, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$")
MAX_BYTES = 2**50


def parse_size(text: str, what: str = "size") -> int:
    """Bytes for a size such as `8GB`; a clear `UserError` for anything else."""
    hint = "write it like 8GB, 7.5G, 8192MiB or a number of bytes (GB means GiB, 2**30)"
    match = _SIZE.match(str(text))
    if not match:
        raise UserError(f"{what} {text!r} is not a size: {hint}")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise UserError(f"{what} {text!r} has an unknown unit {unit!r}: {hint}")
    value = float(number) * factor
    if not math.isfinite(value) or value < 1:
        raise UserError(f"{what} {text!r} must be more than zero: {hint}")
    if value > MAX_BYTES:
        raise UserError(f"{what} {text!r} is beyond any machine (over 1 PiB): {hint}")
    return int(value)


def format_size(num_bytes: int) -> str:
    """`8589934592` -> `8.00 GiB`: the binary units users read on GPU tools."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
