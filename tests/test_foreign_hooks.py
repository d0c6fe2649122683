"""Only real, active offloading hooks make `apply_plan` refuse a model: an ordinary diffusers
pipeline call leaves an empty `_diffusers_hook` registry behind, which is harmless."""

from __future__ import annotations

import pytest
import torch

from runtime.apply import apply_plan
from runtime.errors import PlanMismatchError
from runtime.inventory import inventory
from runtime.plan import Target, build_plan
from runtime.workload import Workload
from tests.pipeline_fixtures import build_tiny_pipeline

W = Workload(64, 64, text_tokens=16)


def _plan():
    inv = inventory("tiny-flux")
    return build_plan(inv, {b.name for b in inv.blocks[::2]}, workload=W,
                      target=Target("cpu", 1 << 30), prefetch_depth=2)


def _generate(pipe):
    with torch.no_grad():
        return pipe(prompt="a cat", num_inference_steps=1, height=64, width=64,
                    max_sequence_length=16, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).images


def test_a_pipeline_called_once_can_take_a_plan():
    pipe = build_tiny_pipeline()
    expected = _generate(pipe)
    registries = [m for m in pipe.transformer.modules() if hasattr(m, "_diffusers_hook")]
    assert registries and all(not m._diffusers_hook.hooks for m in registries)  # the premise
    handle = apply_plan(pipe, _plan(), "cpu")
    assert torch.equal(_generate(pipe), expected)
    handle.remove()


def test_active_diffusers_offloading_is_refused():
    from diffusers.hooks import apply_group_offloading

    pipe = build_tiny_pipeline()
    apply_group_offloading(pipe.transformer, onload_device=torch.device("cpu"),
                           offload_type="block_level", num_blocks_per_group=1)
    with pytest.raises(PlanMismatchError, match="already under accelerate or diffusers offloading"):
        apply_plan(pipe, _plan(), "cpu")
