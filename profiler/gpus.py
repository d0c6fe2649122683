"""Reference GPUs from NVIDIA's spec sheets: memory, PCIe link, dense bf16 tensor rate.

Every figure is a published number (or derived from published numbers, with the arithmetic
next to it) and each entry names its source. `bf16_dense_tflops` is the dense tensor-core rate
for FP16/BF16 inputs with FP32 accumulation (what PyTorch bf16 matmuls use), never the
"with sparsity" figure the datasheets print first.

GeForce cards run FP16/BF16-with-FP32-accumulate at half the FP16-accumulate rate: 128 dense
FLOP per clock per tensor core on both Ampere GA10x and Ada (the GA102 whitepaper gives the RTX
3090 71 TFLOPS = 328 tensor cores x 1.695 GHz x 128; the Ada whitepaper gives the RTX 4090
165.2 TFLOPS = 512 x 2.52 GHz x 128). Cards the whitepapers do not tabulate are derived the
same way from their tensor-core count and boost clock on NVIDIA's product page.

Memory sizes are the nominal capacity in GiB (an "8 GB" card holds 8 GiB, see planner.budget).
"""

from __future__ import annotations

import dataclasses
import enum
import re

_GIB = 2**30

AMPERE_WP = "NVIDIA Ampere GA102 GPU Architecture whitepaper (Appendix A, GeForce RTX 3090)"
ADA_WP = "NVIDIA Ada GPU Architecture whitepaper (Appendix A, Table 'GeForce RTX 4090/4080')"


class Segment(str, enum.Enum):
    """Market segment: decides the compute efficiency a reference profile assumes."""

    GEFORCE = "geforce"
    DATACENTER = "datacenter"
    LOW_POWER = "low-power"  # data-center cards with a small power limit (L4: 72 W)


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    id: str  # slug users type: "rtx-4060"
    name: str  # as the driver reports it: "NVIDIA GeForce RTX 4060"
    memory_bytes: int
    memory_gbps: float  # DRAM bandwidth, GB/s (10**9 B/s)
    pcie_gen: int
    pcie_lanes: int
    bf16_dense_tflops: float  # dense tensor FP16/BF16 with FP32 accumulate, no sparsity
    fp32_tflops: float  # non-tensor FP32 (PyTorch's default for fp32 matmuls: TF32 off)
    fp8_tensor: bool  # tensor cores take fp8 inputs (Ada, Hopper)
    segment: Segment
    source: str  # the spec sheet or whitepaper the figures come from
    aliases: tuple[str, ...] = ()  # other names users or drivers give the card


def _gib(n: int) -> int:
    return n * _GIB


_SPECS: tuple[GpuSpec, ...] = (
    GpuSpec(
        "rtx-3060", "NVIDIA GeForce RTX 3060", _gib(12), 360.0, 4, 16, 25.5, 12.7, False,
        Segment.GEFORCE,
        "NVIDIA GeForce RTX 3060 family specifications (12 GB, 360 GB/s, PCIe 4.0 x16); tensor "
        "rate 112 tensor cores x 1.777 GHz x 128 FLOP/clk per " + AMPERE_WP,
        ("3060", "rtx-3060-12gb"),
    ),
    GpuSpec(
        "rtx-3090", "NVIDIA GeForce RTX 3090", _gib(24), 936.0, 4, 16, 71.0, 35.6, False,
        Segment.GEFORCE,
        AMPERE_WP + ": 71 TFLOPS FP16 tensor with FP32 accumulate (dense), 24 GB GDDR6X "
        "936 GB/s, PCIe 4.0 x16",
        ("3090",),
    ),
    GpuSpec(
        "rtx-4060", "NVIDIA GeForce RTX 4060", _gib(8), 272.0, 4, 8, 30.2, 15.1, True,
        Segment.GEFORCE,
        "NVIDIA GeForce RTX 4060 family specifications (8 GB, 272 GB/s, PCIe 4.0 x8); tensor "
        "rate 96 tensor cores x 2.46 GHz x 128 FLOP/clk per " + ADA_WP,
        ("4060", "rtx-4060-8gb"),
    ),
    GpuSpec(
        "rtx-4060-ti-16gb", "NVIDIA GeForce RTX 4060 Ti", _gib(16), 288.0, 4, 8, 44.1, 22.1, True,
        Segment.GEFORCE,
        "NVIDIA GeForce RTX 4060 Ti family specifications (16 GB, 288 GB/s, PCIe 4.0 x8); "
        "tensor rate 136 tensor cores x 2.535 GHz x 128 FLOP/clk per " + ADA_WP,
        ("4060-ti", "rtx-4060-ti", "4060-ti-16gb"),
    ),
    GpuSpec(
        "rtx-4070", "NVIDIA GeForce RTX 4070", _gib(12), 504.2, 4, 16, 58.3, 29.1, True,
        Segment.GEFORCE,
        "NVIDIA GeForce RTX 4070 family specifications (12 GB, 504 GB/s, PCIe 4.0 x16); tensor "
        "rate 184 tensor cores x 2.475 GHz x 128 FLOP/clk per " + ADA_WP,
        ("4070",),
    ),
    GpuSpec(
        "rtx-4080", "NVIDIA GeForce RTX 4080", _gib(16), 716.8, 4, 16, 97.5, 48.7, True,
        Segment.GEFORCE,
        ADA_WP + ": 97.5 TFLOPS FP16 tensor with FP32 accumulate (dense), 16 GB GDDR6X "
        "716.8 GB/s, PCIe 4.0 x16",
        ("4080",),
    ),
    GpuSpec(
        "rtx-4090", "NVIDIA GeForce RTX 4090", _gib(24), 1008.0, 4, 16, 165.2, 82.6, True,
        Segment.GEFORCE,
        ADA_WP + ": 165.2 TFLOPS FP16 tensor with FP32 accumulate (dense), 24 GB GDDR6X "
        "1008 GB/s, PCIe 4.0 x16",
        ("4090",),
    ),
    GpuSpec(
        "l4", "NVIDIA L4", _gib(24), 300.0, 4, 16, 121.0, 30.3, True,
        Segment.LOW_POWER,
        "NVIDIA L4 Tensor Core GPU datasheet: BF16 242 TFLOPS with sparsity (121 dense), "
        "24 GB GDDR6 300 GB/s, PCIe Gen4 x16, 72 W",
        (),
    ),
    GpuSpec(
        "a100-40gb-pcie", "NVIDIA A100-PCIE-40GB", _gib(40), 1555.0, 4, 16, 312.0, 19.5, False,
        Segment.DATACENTER,
        "NVIDIA A100 Tensor Core GPU datasheet: BF16 312 TFLOPS dense (624 with sparsity), "
        "40 GB HBM2 1555 GB/s, PCIe Gen4 x16",
        ("a100-40gb", "a100-pcie-40gb"),
    ),
    GpuSpec(
        "a100-80gb-pcie", "NVIDIA A100 80GB PCIe", _gib(80), 1935.0, 4, 16, 312.0, 19.5, False,
        Segment.DATACENTER,
        "NVIDIA A100 Tensor Core GPU datasheet: BF16 312 TFLOPS dense (624 with sparsity), "
        "80 GB HBM2e 1935 GB/s, PCIe Gen4 x16",
        ("a100-80gb", "a100-pcie-80gb"),
    ),
    GpuSpec(
        "h100-pcie", "NVIDIA H100 PCIe", _gib(80), 2039.0, 5, 16, 756.0, 51.2, True,
        Segment.DATACENTER,
        "NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe): BF16 1513 TFLOPS with sparsity "
        "(756 dense), 80 GB HBM2e 2.0 TB/s, PCIe Gen5 x16",
        ("h100", "h100-80gb-pcie", "h100-pcie-80gb"),
    ),
)

# Per-lane rate of one PCIe direction after line coding, GB/s: 8 GT/s x 128/130 / 8 for Gen3,
# doubling each generation (PCI-SIG base specifications).
PCIE_LANE_GBPS = {1: 0.25, 2: 0.5, 3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}

_SEPARATORS = re.compile(r"[^a-z0-9]+")
_VENDOR_WORDS = ("nvidia", "geforce")


def normalize(name: str) -> str:
    """The key a GPU name is matched by: lower case, no vendor words, words joined by '-'."""
    words = _SEPARATORS.split(name.strip().lower())
    return "-".join(w for w in words if w and w not in _VENDOR_WORDS)


def same_gpu(a: str, b: str) -> bool:
    """True where two names mean one card: "NVIDIA GeForce RTX 4060" and "rtx-4060"."""
    return normalize(a) == normalize(b)


def specs() -> tuple[GpuSpec, ...]:
    return _SPECS


def keys(spec: GpuSpec) -> set[str]:
    """Every normalised name that selects `spec`."""
    return {normalize(spec.id), normalize(spec.name)} | {normalize(a) for a in spec.aliases}


def link_gbps(spec: GpuSpec) -> float:
    """The PCIe link's one-direction rate, GB/s: per-lane rate x lanes."""
    return PCIE_LANE_GBPS[spec.pcie_gen] * spec.pcie_lanes
