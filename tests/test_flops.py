"""FLOPs and activation peaks counted on `meta` against real forwards and recorded GPU peaks."""

from __future__ import annotations

import torch

from profiler.flops import _LiveBytes, model_trace, trace_module
from runtime.dtypes import DType
from runtime.families import get_family
from runtime.workload import Workload

WORKLOAD = Workload(height=64, width=96, batch=2, text_tokens=16)  # 4x6 = 24 image tokens


def _counted_blocks(model, workload):
    """FLOPs torch counts for every block in one real CPU forward (math attention: exact)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    adapter = get_family("flux")
    inputs = adapter.model_inputs(model, workload, "cpu", torch.float32)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**inputs)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    per_block = [sum(counts[f"{root}.{name}"].values()) for name, _, _ in adapter.blocks(model)]
    return per_block, counter.get_total_flops()


def test_meta_trace_counts_what_a_real_forward_computes(tiny_flux):
    adapter = get_family("flux")
    meta = adapter.build(tiny_flux.config, device="meta")
    trace = trace_module(meta, adapter, WORKLOAD, DType.FP32)
    per_block, total = _counted_blocks(tiny_flux, WORKLOAD)
    assert [t.flops for t in trace.blocks] == per_block
    assert trace.total == total
    assert trace.non_block > 0


def test_flux_dev_on_meta_counts_known_totals():
    trace = model_trace("flux-dev", Workload(height=1024, width=1024, text_tokens=512))
    kinds = [b.kind for b in trace.blocks]
    assert kinds.count("double") == 19 and kinds.count("single") == 38
    dim, image, text, seq = 3072, 4096, 512, 4608
    attention = 4 * 24 * seq * seq * 128
    single = 2 * (3 * dim * dim + dim * 4 * dim + 5 * dim * dim) * seq + 2 * dim * 3 * dim + attention
    assert trace.blocks[-1].flops == single
    double = 2 * 12 * dim * dim * (image + text) + 2 * 2 * dim * 6 * dim + attention
    assert trace.blocks[0].flops == double
    assert 70e12 < trace.total < 80e12


def test_flux_dev_activation_count_is_near_the_h100_measurement():
    # shared/gpu-evidence/h100-2026-11-22/profile_flux-dev_1024_bf16.json: measured with
    # max_memory_allocated around one block forward on an H100 (bf16, 1024x1024, 512 tokens).
    measured = {"double": 325_132_288, "single": 456_148_992}
    trace = model_trace("flux-dev", Workload(height=1024, width=1024, text_tokens=512))
    for block in (trace.blocks[0], trace.blocks[-1]):
        assert 0.8 * measured[block.kind] < block.activation_bytes <= measured[block.kind]


def test_activation_grows_with_tokens_and_batch():
    small = model_trace("tiny-flux", Workload(height=64, width=64, text_tokens=16), DType.FP32)
    big = model_trace("tiny-flux", Workload(height=256, width=256, text_tokens=16), DType.FP32)
    batch = model_trace("tiny-flux", Workload(height=64, width=64, batch=2, text_tokens=16), DType.FP32)
    for s, b, b2 in zip(small.blocks, big.blocks, batch.blocks):
        assert b.activation_bytes > 4 * s.activation_bytes
        assert b2.activation_bytes == 2 * s.activation_bytes


def test_live_bytes_counts_allocations_frees_and_views():
    x = torch.empty(256, device="meta")  # made before: not counted
    live = _LiveBytes()
    with live:
        live.enter("span")
        y = x * 2  # 1 KiB
        z = y.view(16, 16)  # a view allocates nothing
        w = y + 1  # 1 KiB more: peak 2 KiB
        del y, z
        y2 = w.add_(1)  # in place: nothing
        v = w * 3  # w's and v's bytes: 2 KiB again
        live.exit("span")
    assert live.peaks["span"] == 2048
    del w, v, y2
    assert live.live == 0
