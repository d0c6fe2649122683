"""FLOP counts from module shapes against torch's own FlopCounterMode on real FLUX blocks."""

from __future__ import annotations

import pytest

from profiler.flops import attention_flops, block_flops, linear_flops, model_flops, non_block_flops
from runtime.errors import UserError
from runtime.families import get_family
from runtime.workload import Workload

WORKLOAD = Workload(height=64, width=96, batch=2, text_tokens=16)  # 4x6 = 24 image tokens


def _block(model, kind):
    return next(b for _, k, b in get_family("flux").blocks(model) if k == kind)


def _counted(model, kind, workload, math_attention):
    """FLOPs torch counts for one real forward of the first `kind` block."""
    import contextlib

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    inputs = get_family("flux").block_inputs(model, kind, workload, "cpu", torch.float32)
    backend = sdpa_kernel(SDPBackend.MATH) if math_attention else contextlib.nullcontext()
    with torch.no_grad(), backend, FlopCounterMode(display=False) as counter:
        _block(model, kind)(*inputs.args, **inputs.kwargs)
    by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), by_op


@pytest.mark.parametrize("kind", ["double", "single"])
def test_block_flops_equal_flop_counter_with_math_attention(tiny_flux, kind):
    # The math SDPA backend runs attention as two bmm's, which FlopCounterMode counts: exact.
    total, by_op = _counted(tiny_flux, kind, WORKLOAD, math_attention=True)
    assert by_op.get("aten.bmm", 0) > 0
    ours = block_flops(_block(tiny_flux, kind), kind, WORKLOAD, tiny_flux.config)
    assert ours == total


@pytest.mark.parametrize("kind", ["double", "single"])
def test_linear_flops_equal_counted_matmuls_with_default_attention(tiny_flux, kind):
    # The CPU flash SDPA kernel has no FLOP formula in torch, so only the matmuls are counted;
    # they must agree exactly with ours, and attention is the documented formula on top.
    total, by_op = _counted(tiny_flux, kind, WORKLOAD, math_attention=False)
    block = _block(tiny_flux, kind)
    assert linear_flops(block, WORKLOAD) == by_op["aten.addmm"] == total
    seq = 24 + 16
    assert attention_flops(block, WORKLOAD, tiny_flux.config) == 2 * 2 * 2 * 2 * seq * seq * 16


def test_double_block_routes_streams(tiny_flux):
    # Image-only and text-only workloads differ: text tokens only reach the context stream.
    block = _block(tiny_flux, "double")
    more_text = Workload(height=64, width=96, batch=2, text_tokens=32)
    dim = 32
    text_linear_params = 4 * dim * dim + 2 * dim * 4 * dim  # add_q/k/v, to_add_out, ff_context
    extra = 2 * text_linear_params * 2 * 16  # 16 more text tokens, batch 2
    assert linear_flops(block, more_text) - linear_flops(block, WORKLOAD) == extra


def test_non_block_flops_match_flop_counter_on_full_forward(tiny_flux):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    adapter = get_family("flux")
    workload = Workload(height=32, width=32, batch=1, text_tokens=8)
    image, text = 4, 8
    inputs = dict(
        hidden_states=torch.randn(1, image, 16),
        encoder_hidden_states=torch.randn(1, text, 32),
        pooled_projections=torch.randn(1, 32),
        timestep=torch.tensor([0.5]),
        guidance=torch.tensor([3.5]),
        img_ids=torch.zeros(image, 3),
        txt_ids=torch.zeros(text, 3),
    )
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        tiny_flux(**inputs)
    blocks = sum(block_flops(b, k, workload, tiny_flux.config) for _, k, b in adapter.blocks(tiny_flux))
    assert blocks + non_block_flops(tiny_flux, adapter, workload) == counter.get_total_flops()


def test_flux_dev_on_meta_counts_known_totals():
    flops = model_flops("flux-dev", Workload(height=1024, width=1024, text_tokens=512))
    kinds = [k for _, k, _ in flops.blocks]
    assert kinds.count("double") == 19 and kinds.count("single") == 38
    dim, image, text, seq = 3072, 4096, 512, 4608
    attention = 4 * 24 * seq * seq * 128
    single = 2 * (3 * dim * dim + dim * 4 * dim + 5 * dim * dim) * seq + 2 * dim * 3 * dim + attention
    assert flops.blocks[-1][2] == single
    double = 2 * 12 * dim * dim * (image + text) + 2 * 2 * dim * 6 * dim + attention
    assert flops.blocks[0][2] == double
    assert 70e12 < flops.total < 80e12


def test_unknown_module_class_is_a_user_error():
    import torch

    with pytest.raises(UserError, match="no FLOP rule for module class Linear"):
        linear_flops(torch.nn.Linear(4, 4), WORKLOAD)
