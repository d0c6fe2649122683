"""`planner models show MODEL --breakdown`: each block's parameters by role, from the module
tree on `meta` (no weights).

FLUX.1-dev's figures are the architecture's own (dim 3072, MLP 4x, modulation 6x per stream
in double blocks and 3x in single blocks): double blocks 2.87 B MLP, 2.15 B modulation,
1.43 B attention; single blocks 2.87 B MLP (`proj_mlp` plus the 12,288 MLP columns of the fused
`proj_out`) and 1.08 B modulation.
"""

from __future__ import annotations

import functools
import json

import pytest
from typer.testing import CliRunner

from planner.cli import app
from runtime.analysis.breakdown import breakdown_of_blocks, by_kind, model_breakdown
from runtime.analysis.roles import Group, Role
from runtime.catalog import all_models
from runtime.dtypes import DType
from runtime.families import get_family
from runtime.inventory import inventory_of_module

DIM, MLP = 3072, 4 * 3072
LINEAR = DIM * DIM + DIM  # one 3072 -> 3072 projection with bias


def _one_model_per_family() -> list[str]:
    seen, ids = set(), []
    for spec in all_models().values():
        if spec.family not in seen and not spec.id.startswith("tiny"):
            seen.add(spec.family)
            ids.append(spec.id)
    return ids


FAMILY_MODELS = _one_model_per_family()


@functools.lru_cache(maxsize=None)
def _built(model_id: str):
    spec = all_models()[model_id]
    adapter = get_family(spec.family)
    return adapter, adapter.build(spec.config, device="meta")


@pytest.fixture(scope="module")
def flux_dev():
    return {k.kind: k for k in by_kind(model_breakdown("flux-dev"))}


def test_flux_dev_double_blocks(flux_dev):
    double = flux_dev["double"]
    assert double.blocks == 19
    assert double.group(Group.MLP).params == 19 * 2 * (DIM * MLP + MLP + MLP * DIM + DIM)
    assert double.roles[Role.MODULATION].params == 19 * 2 * (DIM * 6 * DIM + 6 * DIM)
    assert double.group(Group.ATTENTION).params == 19 * 8 * LINEAR
    assert round(double.group(Group.MLP).params / 1e9, 2) == 2.87
    assert round(double.group(Group.MODULATION_NORMS).params / 1e9, 2) == 2.15
    assert round(double.group(Group.ATTENTION).params / 1e9, 2) == 1.43


def test_flux_dev_single_blocks_split_the_fused_output_by_columns(flux_dev):
    single = flux_dev["single"]
    assert single.blocks == 38
    # proj_mlp, and the MLP's columns of proj_out (its input is [attention | mlp])
    assert single.roles[Role.MLP].params == 38 * (DIM * MLP + MLP + DIM * MLP)
    # q, k, v, and proj_out's attention columns with its bias
    for role in (Role.Q, Role.K, Role.V, Role.OUT):
        assert single.roles[role].params == 38 * LINEAR
    assert single.roles[Role.MODULATION].params == 38 * (DIM * 3 * DIM + 3 * DIM)
    assert round(single.group(Group.MLP).params / 1e9, 2) == 2.87
    assert round(single.group(Group.MODULATION_NORMS).params / 1e9, 2) == 1.08


@pytest.mark.parametrize("storage", [DType.BF16, DType.Q4_K])
@pytest.mark.parametrize("model_id", FAMILY_MODELS)
def test_breakdown_adds_up_to_each_blocks_inventory(model_id, storage):
    adapter, model = _built(model_id)
    blocks = adapter.blocks(model)
    inv = inventory_of_module(model, adapter, model_id, storage)
    for info, broken in zip(inv.blocks, breakdown_of_blocks(blocks, storage), strict=True):
        assert (broken.name, broken.params, broken.bytes) == (info.name, info.params, info.bytes)


@pytest.mark.parametrize("model_id", [m for m in FAMILY_MODELS if m != "sdxl"])
def test_transformer_blocks_leave_almost_nothing_unexplained(model_id):
    """Every transformer family's tensors find a role: `other` is under 0.1% of each kind."""
    adapter, model = _built(model_id)
    for kind in by_kind(breakdown_of_blocks(adapter.blocks(model), DType.BF16)):
        other = kind.group(Group.OTHER).params
        assert other <= kind.params / 1000, (model_id, kind.kind, other)
        assert kind.group(Group.MLP).params > 0 and kind.group(Group.ATTENTION).params > 0


def test_cli_breakdown_json_and_table():
    runner = CliRunner()
    result = runner.invoke(app, ["models", "show", "flux-dev", "--breakdown", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    single = next(k for k in data["kinds"] if k["kind"] == "single")
    assert single["groups"]["mlp"]["params"] == 38 * (DIM * MLP + MLP + DIM * MLP)
    assert len(data["blocks"]) == 57
    assert sum(b["bytes"] for b in data["blocks"]) == sum(k["bytes"] for k in data["kinds"])
    table = runner.invoke(app, ["models", "show", "flux-dev", "--breakdown"])
    assert table.exit_code == 0, table.output
    assert "2.87 B" in table.stdout and "1.08 B" in table.stdout and "2.15 B" in table.stdout


def test_blocks_the_generic_path_discovers_break_down_too():
    """A module no family adapter knows (transformers' T5 encoder): its discovered blocks'
    roles come from module classes (`T5Attention`'s q/k/v/o, `T5DenseGatedActDense`)."""
    import torch
    from transformers import T5Config, T5EncoderModel

    from runtime.discovery import find_blocks

    config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=96, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu")
    with torch.device("meta"):
        model = T5EncoderModel(config)
    adapter = find_blocks(model).adapter()
    blocks = adapter.blocks(model)
    inv = inventory_of_module(model, adapter, "t5", DType.BF16)
    for info, broken in zip(inv.blocks, breakdown_of_blocks(blocks, DType.BF16), strict=True):
        assert (broken.params, broken.bytes) == (info.params, info.bytes)
        assert broken.roles[Role.Q].params == broken.roles[Role.OUT].params == 32 * 32
        assert broken.roles[Role.MLP].params == 3 * 32 * 96  # wi_0, wi_1, wo
        assert broken.group(Group.OTHER).params <= 32 * 4  # relative position bias: 32 buckets x 4 heads
