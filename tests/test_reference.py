"""Reference profiles from spec sheets: every GPU, the name matching, the labelled estimate."""

from __future__ import annotations

import pytest

from profiler.gpus import keys, link_gbps
from profiler.reference import (
    COPY_OVERHEAD_US,
    PINNED_EFFICIENCY,
    find_gpu,
    reference_gpus,
    reference_profile,
)
from runtime.dtypes import DType
from runtime.errors import UserError
from runtime.inventory import inventory
from runtime.workload import Workload

W1024 = Workload(height=1024, width=1024, text_tokens=512)
REQUIRED = [
    "rtx-3060", "rtx-3090", "rtx-4060", "rtx-4060-ti-16gb", "rtx-4070", "rtx-4080", "rtx-4090",
    "l4", "a100-40gb-pcie", "a100-80gb-pcie", "h100-pcie",
]


def test_every_required_gpu_is_there_with_a_named_source():
    gpus = {g.id: g for g in reference_gpus()}
    assert set(REQUIRED) <= set(gpus)
    for g in gpus.values():
        assert g.source and ("whitepaper" in g.source or "datasheet" in g.source or "specifications" in g.source)
        assert g.bf16_dense_tflops > g.fp32_tflops > 0


def test_no_name_selects_two_gpus():
    seen: dict[str, str] = {}
    for g in reference_gpus():
        for key in keys(g):
            assert seen.setdefault(key, g.id) == g.id, key


@pytest.mark.parametrize(
    "name", ["rtx-4060", "RTX 4060", "NVIDIA GeForce RTX 4060", "4060", "nvidia geforce rtx_4060"]
)
def test_find_gpu_aliases(name):
    assert find_gpu(name).id == "rtx-4060"


@pytest.mark.parametrize(
    "name, gpu_id",
    [
        ("NVIDIA GeForce RTX 4060 Ti", "rtx-4060-ti-16gb"),
        ("4060 Ti", "rtx-4060-ti-16gb"),
        ("NVIDIA A100-PCIE-40GB", "a100-40gb-pcie"),
        ("NVIDIA A100 80GB PCIe", "a100-80gb-pcie"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("L4", "l4"),
    ],
)
def test_find_gpu_driver_names(name, gpu_id):
    assert find_gpu(name).id == gpu_id


def test_unknown_gpu_lists_known_ids():
    with pytest.raises(UserError, match=r"unknown GPU 'RTX 9999': use one of .*rtx-4060.*h100-pcie"):
        find_gpu("RTX 9999")


def test_published_figures_of_the_4060():
    g = find_gpu("4060")
    assert (g.memory_bytes, g.pcie_gen, g.pcie_lanes) == (8 * 2**30, 4, 8)
    assert link_gbps(g) == pytest.approx(15.75, rel=0.01)
    assert 28 < g.bf16_dense_tflops < 32


@pytest.mark.parametrize("gpu", REQUIRED)
def test_reference_profile_at_1024_is_a_positive_estimate_that_fits(gpu):
    spec = find_gpu(gpu)
    p = reference_profile(gpu, "flux-dev", W1024)
    inv = inventory("flux-dev")
    assert p.is_estimate and p.source.startswith("estimate from ") and spec.source in p.source
    assert p.machine.gpu_name == spec.name and p.machine.gpu_memory_bytes == spec.memory_bytes
    assert [b.bytes for b in p.blocks] == [b.bytes for b in inv.blocks]
    assert p.non_block_bytes == inv.non_block_bytes
    assert all(b.compute_ms > 0 and b.activation_bytes > 0 and b.cast_ms == 0 for b in p.blocks)
    assert p.non_block_ms > 0 and p.workspace_bytes > 0
    bw = p.bandwidth
    assert 0 < bw.pageable_gbps < bw.pinned_under_compute_gbps <= bw.pinned_gbps < link_gbps(spec)
    assert bw.copy_overhead_us == COPY_OVERHEAD_US
    sizes = [pt.pinned_gbps for pt in bw.by_size]
    assert sizes == sorted(sizes) and sizes[-1] < bw.pinned_gbps  # overhead costs small copies
    # What must stay on the card whatever the plan fits it.
    fixed = p.non_block_bytes + p.activation_peak_bytes + p.workspace_bytes + max(b.bytes for b in p.blocks)
    assert fixed < spec.memory_bytes


def test_compute_follows_the_card_and_the_resolution():
    slow = reference_profile("rtx-4060", "flux-dev", W1024)
    fast = reference_profile("rtx-4090", "flux-dev", W1024)
    small = reference_profile("rtx-4060", "flux-dev", Workload(height=512, width=512, text_tokens=512))
    assert fast.compute_ms < slow.compute_ms
    assert small.compute_ms < slow.compute_ms / 2.5  # 4x the image tokens, attention quadratic
    # DESIGN.md's worked example: a 4060 at 1024x1024 computes for seconds per step.
    assert 2_000 < slow.compute_ms < 8_000
    assert slow.bandwidth.pinned_under_compute_gbps == pytest.approx(11.8, rel=0.02)


def test_fp8_storage_halves_matrix_bytes_and_adds_a_cast():
    bf16 = reference_profile("rtx-4060", "flux-dev", W1024, DType.BF16)
    fp8 = reference_profile("RTX 4060", "flux-dev", W1024, DType.FP8)
    assert fp8.storage_dtype is DType.FP8 and fp8.compute_dtype is DType.BF16
    b16, b8 = bf16.blocks[0], fp8.blocks[0]
    assert 0.5 < b8.bytes / b16.bytes < 0.51
    # 1 byte read + 2 written per fp8 element over 272 GB/s x 0.8: ~4.7 ms for a double block.
    assert b8.cast_ms == pytest.approx(b8.bytes * 3 / (272e9 * 0.8) * 1e3, rel=0.01)
    assert b8.compute_ms == b16.compute_ms


def test_reference_profile_rejects_unknown_model():
    with pytest.raises(UserError, match="unknown model 'flux-pro'"):
        reference_profile("rtx-4060", "flux-pro", W1024)


def test_pinned_efficiency_is_what_the_profile_uses():
    p = reference_profile("h100-pcie", "tiny-flux", Workload(height=64, width=64, text_tokens=16))
    assert p.bandwidth.pinned_gbps == pytest.approx(3.938 * 16 * PINNED_EFFICIENCY)
