"""A model loaded from safetensors on the CPU computes from tensors 8 + header bytes into the
file, not on a 64-byte line, and CPU GEMM kernels take other paths for operands that are not
16-byte aligned: the ring on the CPU places each streamed block's views as far past a line as
its tensors were (`packing.Layout.phase`), so a streamed block computes exactly what the plain
model computes. Real tiny-flux, real engine, CPU; the CLI half is tests/test_disk_tier_cli.py."""

from __future__ import annotations

import pytest
import torch

from runtime.apply import apply_plan
from runtime.engine import packing
from tests.conftest import build_tiny_flux
from tests.test_engine import N_BLOCKS, plan_for, run

PHASE_BYTES = 56  # where the tiny pipeline's safetensors file put its tensors (8-byte aligned)


def rehome(model: torch.nn.Module, phase_bytes: int) -> None:
    """Every parameter into one flat buffer, back to back from `phase_bytes` past a 64-byte
    line, as a safetensors load leaves them (every tensor here is a multiple of 64 bytes)."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    flat = torch.empty(total + 64 // 4, dtype=torch.float32)
    skip = ((phase_bytes - flat.data_ptr()) % 64) // 4
    offset = skip
    for p in params:
        view = flat.narrow(0, offset, p.numel()).view(p.shape)
        view.copy_(p.data)
        p.data = view
        offset += p.numel()


def test_the_tensors_of_this_model_are_off_the_line():
    model = build_tiny_flux()
    rehome(model, PHASE_BYTES)
    assert {p.data_ptr() % 64 for p in model.parameters()} == {PHASE_BYTES}
    block = model.transformer_blocks[1]
    layout = packing.layout_of(block, True, torch.float32)
    assert layout.phase == {"fp32": PHASE_BYTES // 4}
    aligned = packing.layout_of(build_tiny_flux().transformer_blocks[1], True, torch.float32)
    assert aligned.phase == {}


@pytest.mark.parametrize("streamed", [list(range(N_BLOCKS)), [1, 4, 6]])
def test_streamed_blocks_compute_what_the_plain_model_computes_where_it_sits(streamed):
    model = build_tiny_flux()
    rehome(model, PHASE_BYTES)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plain = run(model)
    handle = apply_plan(model, plan_for(model, streamed, depth=2), "cpu")
    try:
        assert handle.ring_buffers(), "nothing streamed"
        offloaded = run(model)
    finally:
        handle.remove()
    for a, b in zip(plain, offloaded):
        assert torch.equal(a, b), (a - b).abs().max()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
