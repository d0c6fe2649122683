"""`planner apply`'s measurement on CUDA: peak VRAM per phase, the denoiser gone before decode."""

from __future__ import annotations

import pytest

from runtime.inventory import inventory
from runtime.plan import Target, build_plan
from runtime.workload import Workload
from tests.pipeline_fixtures import save_tiny_pipeline


@pytest.mark.gpu
def test_phase_peaks_on_cuda(tmp_path, cuda_device):
    from runtime.generate import GenerateConfig, generate

    inv = inventory("tiny-flux")
    plan = build_plan(inv, {b.name for b in inv.blocks[::2]}, workload=Workload(64, 64, text_tokens=16),
                      target=Target("cuda", 1 << 30), prefetch_depth=2)
    weights = save_tiny_pipeline(tmp_path / "pipe")
    result = generate(plan, GenerateConfig(weights=weights, prompt="a cat", output=tmp_path / "o.png",
                                           steps=2, device=str(cuda_device)))
    phases = result.phase_peak_vram_bytes
    assert list(phases) == ["encode", "load_vae", "denoise", "decode"]
    assert phases["denoise"] == result.peak_vram_bytes > 0
    assert phases["decode"] > 0
