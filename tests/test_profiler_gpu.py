"""The profiler on CUDA: a small FLUX config measured for real, figures within physics."""

from __future__ import annotations

import pytest

from runtime.dtypes import DType
from runtime.inventory import inventory
from runtime.workload import Workload

pytestmark = pytest.mark.gpu

W = Workload(height=256, width=256, text_tokens=16)


@pytest.fixture(scope="module")
def cuda_profile():
    from profiler.run import profile_model

    return profile_model("tiny-flux", W, DType.BF16, "cuda:0")


def test_machine_facts_come_from_the_driver(cuda_profile):
    import torch

    m = cuda_profile.machine
    assert m.gpu_name == torch.cuda.get_device_name(0) and m.gpu_name != "cpu"
    assert m.gpu_memory_bytes == torch.cuda.get_device_properties(0).total_memory
    assert m.cuda == torch.version.cuda and m.driver
    assert m.pcie_gen_max is None or 1 <= m.pcie_gen_max <= 6
    assert m.pcie_width_max is None or m.pcie_width_max in (1, 2, 4, 8, 16, 32)


def test_bandwidth_is_plausible(cuda_profile):
    bw = cuda_profile.bandwidth
    for gbps in (bw.pinned_gbps, bw.pinned_under_compute_gbps):
        assert 1 < gbps < 100
    assert 0.1 < bw.pageable_gbps < 100
    assert 0 < bw.copy_overhead_us < 1000
    # Large pinned copies beat 1 MiB ones (fixed overhead), and pinned beats pageable.
    assert bw.by_size[-1].pinned_gbps > bw.by_size[0].pinned_gbps * 0.9
    assert bw.pinned_gbps > bw.pageable_gbps * 0.9


def test_blocks_are_timed_and_fit_the_card(cuda_profile):
    p = cuda_profile
    assert "estimated" not in p.source  # activation measured with the allocator
    assert [b.bytes for b in p.blocks] == [b.bytes for b in inventory("tiny-flux", DType.BF16).blocks]
    for b in p.blocks:
        assert 0 < b.compute_ms < 1_000 and 0 < b.activation_bytes < p.machine.gpu_memory_bytes
    assert 0 < p.workspace_bytes < p.machine.gpu_memory_bytes


def test_fp8_cast_is_timed_on_the_device():
    from profiler.run import profile_model

    p = profile_model("tiny-flux", W, DType.FP8, "cuda:0")
    assert all(0 < b.cast_ms < 100 for b in p.blocks)


def test_activation_measured_grows_with_resolution():
    from profiler.blocks import measure_block
    from profiler.flops import meta_model
    from profiler.machine import parse_device

    model, adapter = meta_model("tiny-flux")
    _, kind, block = next(b for b in adapter.blocks(model) if b[1] == "single")
    dev = parse_device("cuda:0")
    small, big = (
        measure_block(model, adapter, kind, block, Workload(height=r, width=r, text_tokens=16), DType.BF16, dev, DType.BF16)
        for r in (64, 1024)
    )
    assert small.activation_measured and big.activation_measured
    assert big.activation_bytes > 10 * small.activation_bytes
    assert big.compute_ms > small.compute_ms
