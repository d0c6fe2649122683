"""Plans and inventories for quantized storage: packed sizes from ggml's tables, the per-block
quant types in plan files (optional: plans written before them load unchanged), the schema."""

from __future__ import annotations

import json

import jsonschema
import pytest

from runtime.dtypes import QUANT_BLOCKS, DType, dequantized_bytes, storage_dtype
from runtime.errors import PlanFormatError
from runtime.inventory import device_bytes_by_dtype, inventory
from runtime.plan import CastMode, Target, build_plan, dumps_plan, loads_plan
from runtime.plan_schema import plan_schema
from runtime.workload import Workload


def test_quant_block_sizes_are_ggmls():
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    for dtype, sizes in QUANT_BLOCKS.items():
        if dtype.is_gguf:
            assert GGML_QUANT_SIZES[GGMLQuantizationType[dtype.value.upper()]] == sizes


def test_flux_dev_q4_k_is_the_size_users_download():
    inv = inventory("flux-dev", DType.Q4_K)
    # a Q4 FLUX.1-dev transformer is about 6.8 GB (issue 13); ours quantizes every whole-block matrix
    assert 6.5e9 < inv.total_bytes < 6.9e9
    block = inv.blocks[0]
    assert set(block.bytes_by_dtype) == {"q4_k", "fp32"}
    pre = device_bytes_by_dtype(block, cast_on_host=True)
    assert pre == {"bf16": dequantized_bytes(DType.Q4_K, block.bytes_by_dtype["q4_k"]),
                   "fp32": block.bytes_by_dtype["fp32"]}
    assert pre["bf16"] == inventory("flux-dev", DType.BF16).blocks[0].bytes_by_dtype["bf16"] - 2 * (
        block.bytes_by_dtype["fp32"] // 4)


def test_storage_of_each_tensor():
    assert storage_dtype(DType.Q4_K, (3072, 3072)) is DType.Q4_K
    assert storage_dtype(DType.Q4_K, (3072, 64)) is DType.BF16  # no whole 256-block row
    assert storage_dtype(DType.Q8_0, (3072,)) is DType.FP32
    assert storage_dtype(DType.NF4, (3072, 64)) is DType.NF4
    assert storage_dtype(DType.NF4, (3072,)) is DType.BF16


def plan(storage=DType.Q4_K):
    inv = inventory("tiny-flux", storage)
    return build_plan(inv, {inv.blocks[0].name}, workload=Workload(64, 64, text_tokens=16),
                      target=Target("test", 1 << 30), cast=CastMode.AUTO)


def test_plan_records_quant_per_block_and_round_trips():
    p = plan(DType.Q8_0)
    assert all(b.quant == ("q8_0",) for b in p.blocks)
    text = dumps_plan(p)
    assert loads_plan(text) == p
    jsonschema.validate(json.loads(text), plan_schema())


def test_plain_plans_carry_no_quant_key():
    text = dumps_plan(plan(DType.BF16))
    assert '"quant"' not in text
    assert all(b.quant == () for b in loads_plan(text).blocks)


@pytest.mark.parametrize("value", [[], ["q4_x"], ["q8_0", "q4_k"], "q4_k", ["q4_k", "q4_k"]])
def test_bad_quant_is_refused(value):
    data = json.loads(dumps_plan(plan()))
    data["blocks"][0]["quant"] = value
    with pytest.raises(PlanFormatError, match=r"blocks\[0\]\.quant must be"):
        loads_plan(json.dumps(data))
