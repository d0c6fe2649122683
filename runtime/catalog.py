"""Models users can name: each a family plus the config of its released transformer.

The block inventory is always derived from these configs by building the architecture on the
`meta` device (see `runtime.inventory`), never typed in by hand.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from runtime.dtypes import DType
from runtime.errors import UserError

if TYPE_CHECKING:
    from runtime.workload import Workload


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    id: str
    family: str
    config: Mapping[str, Any]
    storage_dtype: DType  # how the released checkpoint stores weights
    text_tokens: int  # T5 sequence length the pipeline uses
    default_steps: int
    default_guidance: float
    description: str

    def workload(self, resolution: str = "1024x1024", batch: int = 1) -> "Workload":
        """The workload of one image at `resolution` (WIDTHxHEIGHT) with this model's text length."""
        from runtime.workload import Workload, parse_resolution

        width, height = parse_resolution(resolution)
        return Workload(height=height, width=width, batch=batch, text_tokens=self.text_tokens)


def _spec(**fields) -> ModelSpec:
    fields["config"] = MappingProxyType(dict(fields["config"]))
    return ModelSpec(**fields)


_FLUX_1 = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "axes_dims_rope": (16, 56, 56),
}

CATALOG: Mapping[str, ModelSpec] = MappingProxyType(
    {
        spec.id: spec
        for spec in (
            _spec(
                id="flux-dev",
                family="flux",
                config={**_FLUX_1, "guidance_embeds": True},
                storage_dtype=DType.BF16,
                text_tokens=512,
                default_steps=28,
                default_guidance=3.5,
                description="FLUX.1 [dev], 12B guidance-distilled transformer",
            ),
            _spec(
                id="flux-schnell",
                family="flux",
                config={**_FLUX_1, "guidance_embeds": False},
                storage_dtype=DType.BF16,
                text_tokens=256,
                default_steps=4,
                default_guidance=0.0,
                description="FLUX.1 [schnell], 12B timestep-distilled transformer",
            ),
            _spec(
                id="tiny-flux",
                family="flux",
                config={
                    "patch_size": 1,
                    "in_channels": 16,
                    "num_layers": 3,
                    "num_single_layers": 5,
                    "attention_head_dim": 16,
                    "num_attention_heads": 2,
                    "joint_attention_dim": 32,
                    "pooled_projection_dim": 32,
                    "guidance_embeds": True,
                    "axes_dims_rope": (4, 6, 6),
                },
                storage_dtype=DType.FP32,
                text_tokens=16,
                default_steps=2,
                default_guidance=3.5,
                description="tiny FLUX for tests: 3 double + 5 single blocks, runs on CPU in ms",
            ),
        )
    }
)


def get_model(model_id: str) -> ModelSpec:
    try:
        return CATALOG[model_id]
    except KeyError:
        known = ", ".join(CATALOG)
        raise UserError(
            f"unknown model {model_id!r}: choose one of {known} (see `planner models list`)"
        ) from None
