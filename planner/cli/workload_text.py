"""A workload in a few words, as tables show it: `1024x1024 b1 cfg none` (+ frames for video)."""

from __future__ import annotations


def workload_text(w) -> str:
    frames = w.frames
    video = f" {frames}f" if frames != 1 else ""
    return f"{w.resolution}{video} b{w.batch} cfg {w.cfg.value} t{w.text_tokens}"
