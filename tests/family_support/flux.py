"""FLUX.1 test support: the tiny FluxPipeline and the BFL single-file naming."""

from __future__ import annotations

TINY_MODELS = ("tiny-flux",)
APPLY_SIZE = (64, 64)
APPLY_FRAMES = 1


def build_tiny_pipeline(model_id: str = "tiny-flux", seed: int = 0):
    from tests.pipeline_fixtures import build_tiny_pipeline as build

    assert model_id == "tiny-flux"
    return build(seed)


def to_original(state: dict) -> dict:
    from tests.bfl_format import to_bfl

    return to_bfl(state)
