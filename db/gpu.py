"""GPU names as people type them: "NVIDIA GeForce RTX 4060", "rtx 4060" and "rtx-4060" match."""

from __future__ import annotations

import re

_VENDOR_WORDS = ("nvidia", "geforce")
_SEPARATORS = re.compile(r"[\s_\-]+")


def normalize_gpu_name(name: str) -> str:
    """A key two names of the same card share: lower case, no vendor words, single spaces."""
    words = _SEPARATORS.split(name.strip().lower())
    return " ".join(w for w in words if w and w not in _VENDOR_WORDS)


def same_gpu(a: str, b: str) -> bool:
    return normalize_gpu_name(a) == normalize_gpu_name(b)
