"""A catalog model's description: its family, the config of its released transformer, how it
is stored and run (`ModelSpec`; `Experts` for a model of several transformers run in turn).

Family modules build their `MODELS` with `model_spec`; `runtime.catalog` collects them.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

from runtime.dtypes import DType
from runtime.errors import UserError
from runtime.workload import CfgMode

if TYPE_CHECKING:
    from runtime.workload import Workload


@dataclasses.dataclass(frozen=True)
class Experts:
    """A model whose pipeline runs several transformers of this one architecture in turn
    (Wan 2.2 A14B: `transformer` for high-noise steps, `transformer_2` after the boundary)."""

    attrs: tuple[str, ...]  # pipeline attributes, in the order the denoising runs them
    boundary_ratio: float  # the next expert takes over when t < boundary_ratio x 1000
    shift: float  # flow shift of the released sampling: splits the steps at tune time
    guidance_2: float | None = None  # guidance of the later experts' steps; None: the model's


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    id: str
    family: str
    config: Mapping[str, Any]
    storage_dtype: DType  # how the released checkpoint stores weights
    text_tokens: int  # text sequence length the pipeline uses
    default_steps: int
    default_guidance: float
    description: str
    config_source: str = ""  # where the released config's numbers come from
    # parameter count as the publisher states it ("12B", "8.1B"); None for test models
    stated_params: str | None = None
    cfg: CfgMode = CfgMode.NONE  # how the pipeline runs guidance: none, batched, two forwards
    default_frames: int = 1  # frames of a video model's default clip; 1 for images
    default_resolution: str = "1024x1024"
    experts: Experts | None = None  # None: one transformer (`config` describes each expert)
    # the family adapter's own workload rule (sizes its pipeline rounds, frames it refuses),
    # attached by `runtime.families.family_models`; None for a spec built outside the registry
    family_check: Callable[[Mapping[str, Any], "Workload"], None] | None = dataclasses.field(
        default=None, compare=False, repr=False
    )

    def workload(
        self, resolution: str | None = None, batch: int = 1, frames: int | None = None,
        cfg: CfgMode | None = None,
    ) -> "Workload":
        """The workload of one image (or clip) at `resolution` (WIDTHxHEIGHT) with this model's
        text length, frames and CFG mode unless given."""
        from runtime.workload import Workload, parse_resolution

        width, height = parse_resolution(resolution or self.default_resolution)
        workload = Workload(
            height=height, width=width, batch=batch, cfg=cfg or self.cfg,
            text_tokens=self.text_tokens, frames=self.default_frames if frames is None else frames,
        )
        self.check_workload(workload)
        return workload

    def check_workload(self, workload: "Workload") -> None:
        """Refuse a workload this model's pipeline cannot run as given: frames for an image
        model, guidance run otherwise than its pipeline does, sizes its family rounds."""
        if self.default_frames == 1 and workload.frames != 1:
            raise UserError(
                f"{self.id} makes images, not clips: drop --frames (frames {workload.frames})"
            )
        if workload.cfg is not self.cfg and workload.cfg is not CfgMode.NONE:  # NONE: guidance off
            raise UserError(
                f"{self.id}'s pipeline runs guidance as {self.cfg.value!r}, not {workload.cfg.value!r}: "
                f"a plan for it uses cfg {self.cfg.value!r}"
            )
        if self.family_check is not None:
            self.family_check(self.config, workload)


def model_spec(**fields) -> ModelSpec:
    """A spec with its config frozen (family modules build their `MODELS` with this)."""
    fields["config"] = MappingProxyType(dict(fields["config"]))
    return ModelSpec(**fields)
