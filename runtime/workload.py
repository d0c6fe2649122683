"""What one denoising step computes on: resolution, frames, batch, text length, CFG mode."""

from __future__ import annotations

import dataclasses
import enum
import re

from runtime.errors import UserError


MAX_FRAMES = 1024
MAX_SIDE = 16384  # pixels: the plan format's bound, so every workload we plan for can be stored


class CfgMode(str, enum.Enum):
    NONE = "none"  # guidance-distilled (FLUX.1-dev) or guidance off
    BATCHED = "batched"  # conditional and unconditional in one forward of batch 2x
    SEQUENTIAL = "sequential"  # two forwards per step


@dataclasses.dataclass(frozen=True)
class Workload:
    height: int
    width: int
    batch: int = 1
    cfg: CfgMode = CfgMode.NONE
    text_tokens: int = 512
    frames: int = 1  # pixel-space frames of a video; 1 for an image

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 16 <= value <= MAX_SIDE or value % 16:
                raise UserError(f"{name} {value!r} is not usable: give a multiple of 16 from 16 to {MAX_SIDE}")
        if not isinstance(self.batch, int) or not 1 <= self.batch <= 64:
            raise UserError(f"batch {self.batch!r} is out of range: give 1 to 64")
        if not isinstance(self.text_tokens, int) or not 1 <= self.text_tokens <= 4096:
            raise UserError(f"text_tokens {self.text_tokens!r} is out of range: give 1 to 4096")
        if not isinstance(self.frames, int) or not 1 <= self.frames <= MAX_FRAMES:
            raise UserError(f"frames {self.frames!r} is out of range: give 1 to {MAX_FRAMES}")

    @property
    def forward_batch(self) -> int:
        """Batch one transformer forward sees."""
        return self.batch * (2 if self.cfg is CfgMode.BATCHED else 1)

    @property
    def forwards_per_step(self) -> int:
        return 2 if self.cfg is CfgMode.SEQUENTIAL else 1

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"


_RESOLUTION = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_resolution(text: str) -> tuple[int, int]:
    """`1024x768` -> (width, height) = (1024, 768)."""
    match = _RESOLUTION.match(text)
    if not match:
        raise UserError(f"resolution {text!r} is not WIDTHxHEIGHT: write e.g. 1024x1024")
    width, height = int(match.group(1)), int(match.group(2))
    for value in (width, height):
        if not 16 <= value <= MAX_SIDE or value % 16:
            raise UserError(f"resolution {text!r}: each side must be a multiple of 16 from 16 to {MAX_SIDE}")
    return width, height
