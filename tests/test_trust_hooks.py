"""Issue 11, item 7: after an ordinary diffusers pipeline call the transformer carries an empty
`_diffusers_hook` registry; `apply_plan` accepts it, and still refuses real, active hooks.
A real tiny FluxPipeline on CPU, outputs compared bit for bit."""

from __future__ import annotations

import pytest
import torch

from runtime.apply import apply_plan
from runtime.errors import PlanMismatchError
from runtime.inventory import inventory
from runtime.plan import HostMemory, Target, build_plan
from runtime.workload import Workload
from tests.pipeline_fixtures import build_tiny_pipeline


def _plan():
    inv = inventory("tiny-flux")
    return build_plan(inv, {b.name for b in inv.blocks[::2]}, workload=Workload(64, 64, text_tokens=16),
                      target=Target("cpu", 1 << 30), host_memory=HostMemory.PAGEABLE)


def _generate(pipe):
    return pipe(prompt="a cat", num_inference_steps=2, height=64, width=64, max_sequence_length=16,
                guidance_scale=3.5, generator=torch.Generator("cpu").manual_seed(0), output_type="latent").images


def test_an_empty_registry_left_by_a_pipeline_call_is_accepted():
    pipe = build_tiny_pipeline()
    plain = _generate(pipe)  # the ordinary use that leaves an empty registry behind
    registry = getattr(pipe.transformer, "_diffusers_hook", None)
    assert registry is not None and len(registry.hooks) == 0, "diffusers left no empty registry: test is moot"

    handle = apply_plan(pipe, _plan(), "cpu")
    try:
        assert handle.stats.pageable_bytes > 0
        assert torch.equal(_generate(pipe), plain)
    finally:
        handle.remove()
    assert torch.equal(_generate(pipe), plain)


def test_active_diffusers_hooks_are_still_refused():
    pipe = build_tiny_pipeline()
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    with pytest.raises(PlanMismatchError, match="already under accelerate or diffusers offloading hooks"):
        apply_plan(pipe, _plan(), "cpu")
