"""The parameter breakdown of ComfyUI's own FLUX (BFL layout: q, k, v fused in `qkv`; q, k, v
and the MLP input fused in the single blocks' `linear1`, attention output and MLP output in
`linear2`) equals the diffusers tiny-flux's, block for block and role for role.

ComfyUI comes from the pinned sdist (tests/comfy_fixtures.py); without it this test skips with
the reason, and `.ci/run` runs it in a venv that has it.
"""

from __future__ import annotations

from comfy_fixtures import comfyui, tiny_flux_patcher
from runtime.analysis.breakdown import breakdown_of_blocks
from runtime.analysis.sites import mlp_sites
from runtime.dtypes import DType
from runtime.families import get_family
from tests.conftest import build_tiny_flux


def test_comfy_flux_breaks_down_as_the_diffusers_model_does():
    comfyui()
    module = tiny_flux_patcher().model.diffusion_model
    comfy_blocks = get_family("comfy-flux").blocks(module)
    diffusers = build_tiny_flux()
    ours = breakdown_of_blocks(comfy_blocks, DType.BF16)
    theirs = breakdown_of_blocks(get_family("flux").blocks(diffusers), DType.BF16)
    for a, b in zip(ours, theirs, strict=True):
        assert {r: s.params for r, s in a.roles.items()} == \
            {r: s.params for r, s in b.roles.items()}, (a.name, b.name)
    single = comfy_blocks[-1][2]
    assert [(s.path, s.units) for s in mlp_sites(single)] == [("linear2", 4 * 32)]
