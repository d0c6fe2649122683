"""Plans that store blocks in their own format and prune MLP units (`runtime.engine.conversion`):
on the tiny FLUX the engine's output equals the model converted the same way ahead of time,
bit for bit; pruning N units equals the model with those rows and columns removed by hand;
`remove()` puts every original tensor back; the plan file carries the fields and reads back."""

from __future__ import annotations

import copy

import pytest
import torch

from runtime.analysis.convert import convert_block
from runtime.analysis.mixed import converted_inventory
from runtime.apply import apply_plan
from runtime.dtypes import DType
from runtime.errors import PlanFormatError
from runtime.families import get_family
from runtime.inventory import inventory
from runtime.plan import CastMode, Target, build_plan, dumps_plan, loads_plan
from runtime.workload import Workload
from tests.conftest import build_tiny_flux

WORKLOAD = Workload(64, 64, text_tokens=16)
FORMATS = {"transformer_blocks.0": DType.Q8_0, "transformer_blocks.2": DType.FP8,
           "single_transformer_blocks.1": DType.Q8_0, "single_transformer_blocks.4": DType.FP8}
PRUNED = {"transformer_blocks.1": (("ff.net.2", (0, 5, 17)), ("ff_context.net.2", (3,))),
          "single_transformer_blocks.2": (("proj_out", (1, 2, 100)),)}


def _inputs(model, dtype=torch.float32):
    torch.manual_seed(3)
    return get_family("flux").model_inputs(model, WORKLOAD, "cpu", dtype)


def _plan(formats=FORMATS, pruned=PRUNED, streamed=("transformer_blocks.0", "transformer_blocks.1",
          "single_transformer_blocks.1", "single_transformer_blocks.2"), cast=CastMode.AUTO,
          storage=DType.FP32):
    inv = converted_inventory(inventory("tiny-flux", storage), formats, pruned)
    # `cast` for the blocks in their own format; plain blocks have nothing to cast (`pre`)
    return build_plan(inv, set(streamed), workload=WORKLOAD, target=Target("cpu", 1 << 30),
                      cast=CastMode.PRE, casts={name: cast for name in formats},
                      formats=formats, pruned=pruned)


def _by_hand(model):
    """The PRUNED units removed with plain slicing, module by module."""
    def keep(n, drop):
        return torch.tensor([i for i in range(n) if i not in drop])

    double = model.transformer_blocks[1]
    for ff, drop in ((double.ff, {0, 5, 17}), (double.ff_context, {3})):
        rows = keep(ff.net[0].proj.out_features, drop)
        ff.net[0].proj.weight = torch.nn.Parameter(ff.net[0].proj.weight[rows])
        ff.net[0].proj.bias = torch.nn.Parameter(ff.net[0].proj.bias[rows])
        ff.net[2].weight = torch.nn.Parameter(ff.net[2].weight[:, rows])
    single = model.single_transformer_blocks[2]
    rows = keep(single.proj_mlp.out_features, {1, 2, 100})
    attn = single.proj_out.in_features - single.proj_mlp.out_features
    single.proj_mlp.weight = torch.nn.Parameter(single.proj_mlp.weight[rows])
    single.proj_mlp.bias = torch.nn.Parameter(single.proj_mlp.bias[rows])
    columns = torch.cat([torch.arange(attn), attn + rows])
    single.proj_out.weight = torch.nn.Parameter(single.proj_out.weight[:, columns])


@pytest.mark.parametrize("cast,storage", [(CastMode.AUTO, DType.FP32), (CastMode.AUTO, DType.BF16),
                                          (CastMode.PRE, DType.FP32), (CastMode.PRE, DType.BF16)])
def test_mixed_plan_equals_the_model_converted_ahead_of_time(cast, storage):
    dtype = storage.torch()
    model = build_tiny_flux(dtype=dtype)
    expected = copy.deepcopy(model)
    _by_hand(expected)
    for name, fmt in FORMATS.items():
        convert_block(expected.get_submodule(name), fmt, dtype)
    originals = {n: p for n, p in model.named_parameters()}
    values = {n: p.detach().clone() for n, p in originals.items()}
    handle = apply_plan(model, _plan(cast=cast, storage=storage), "cpu")
    with torch.no_grad():
        got = model(**_inputs(model, dtype))[0]
        want = expected(**_inputs(expected, dtype))[0]
    assert torch.equal(got, want)
    handle.remove()
    for name, param in model.named_parameters():  # the same tensors, with their own values
        assert param is originals[name] and torch.equal(param, values[name]), name
    assert model.transformer_blocks[1].ff.net[2].in_features == 4 * 32


def test_pruning_equals_the_rows_and_columns_removed_by_hand():
    model = build_tiny_flux()
    expected = copy.deepcopy(model)
    _by_hand(expected)
    handle = apply_plan(model, _plan(formats={}), "cpu")
    with torch.no_grad():
        assert torch.equal(model(**_inputs(model))[0], expected(**_inputs(expected))[0])
    handle.remove()


def test_a_converted_block_streams_fewer_bytes():
    plain = inventory("tiny-flux")
    mixed = converted_inventory(plain, FORMATS, PRUNED)
    for name in list(FORMATS) + list(PRUNED):
        assert mixed.block(name).bytes < plain.block(name).bytes, name
    assert mixed.block("transformer_blocks.0").bytes_by_dtype.keys() == {"q8_0", "fp32"}


def test_plan_file_carries_formats_and_pruned_units():
    import json

    import jsonschema

    from runtime.plan_schema import plan_schema

    plan = _plan()
    text = dumps_plan(plan)
    assert loads_plan(text) == plan
    jsonschema.validate(json.loads(text), plan_schema())
    assert '"format": "q8_0"' in text and '"ff.net.2": [\n' in text or '"ff.net.2"' in text
    plain = build_plan(inventory("tiny-flux"), set(), workload=WORKLOAD, target=Target("cpu", 1 << 30))
    assert '"format"' not in dumps_plan(plain) and '"pruned"' not in dumps_plan(plain)


@pytest.mark.parametrize("field,value", [
    ("format", "q5_k"), ("format", 8), ("pruned", {}), ("pruned", {"ff.net.2": [3, 1]}),
    ("pruned", {"ff.net.2": [-1]}), ("pruned", {"b": [1], "a": [2]}), ("pruned", {"ff.net.2": []}),
])
def test_bad_block_fields_are_refused(field, value):
    import json

    import jsonschema

    from runtime.plan_schema import plan_schema

    data = json.loads(dumps_plan(_plan()))
    data["blocks"][0][field] = value
    with pytest.raises(PlanFormatError, match=f"blocks\\[0\\].{field}"):
        loads_plan(json.dumps(data))
    if value not in ({"ff.net.2": [3, 1]}, {"b": [1], "a": [2]}):  # order: the reader's rule
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(data, plan_schema())


def test_pruning_unknown_units_is_refused_and_leaves_the_model():
    from runtime.errors import UserError

    model = build_tiny_flux()
    before = {n: p for n, p in model.named_parameters()}
    bad = {"transformer_blocks.1": (("ff.net.2", (999,)),)}
    plan = build_plan(inventory("tiny-flux"), set(), workload=WORKLOAD,
                      target=Target("cpu", 1 << 30), pruned=bad)
    with pytest.raises(UserError, match="outside the 128 hidden units"):
        apply_plan(model, plan, "cpu")
    assert all(p is before[n] for n, p in model.named_parameters())


def test_the_store_keeps_a_mixed_plan_and_refuses_one_whose_quant_disagrees(tmp_path):
    import dataclasses

    from db.plan_check import PlanRejected
    from db.store import open_store

    plan = _plan()
    with open_store(f"sqlite:///{tmp_path / 's.db'}") as store:
        assert store.get_plan(store.save_plan(plan)).plan == plan
        block = plan.blocks[0]
        assert block.format is DType.Q8_0 and block.quant == ("q8_0",)
        bad = dataclasses.replace(plan, blocks=(dataclasses.replace(block, quant=()),
                                                *plan.blocks[1:]))
        with pytest.raises(PlanRejected, match="stored as q8_0 but its quant types say none"):
            store.save_plan(bad)
