"""Per-block sensitivity (`runtime.analysis.sensitivity`, `planner analyze`) on the tiny FLUX,
and the formats it converts blocks to (`runtime.analysis.convert`): the error of a block is the
error of the model whose block was converted ahead of time, the model is left as it was, and
the table is stored."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from planner.cli import app
from runtime.analysis.convert import FORMATS, computed, convert_block, packed
from runtime.analysis.sensitivity import block_sensitivity
from runtime.dtypes import DType
from runtime.families import get_family
from runtime.workload import Workload
from tests.conftest import build_tiny_flux
from tests.pipeline_fixtures import save_tiny_pipeline

ADAPTER = get_family("flux")


def _calibration(model, n: int = 2):
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(((), ADAPTER.model_inputs(model, Workload(64, 64, text_tokens=16), "cpu",
                                             torch.float32)))
    return out


@pytest.mark.parametrize("fmt,bound", [(DType.Q8_0, 0.01), (DType.Q4_K, 0.1), (DType.FP8, 0.04)])
def test_formats_round_trip_through_the_engines_dequantization(fmt, bound):
    torch.manual_seed(0)
    matrix = torch.randn(32, 512)
    stored = packed(matrix, fmt)
    back = computed(matrix, fmt, torch.float32)
    assert 0 < float((back - matrix).norm() / matrix.norm()) < bound
    if fmt.is_quantized:  # packed bytes, as a GGUF file holds them
        assert stored.dtype == torch.uint8 and stored.numel() == fmt.nbytes(matrix.numel())


def test_q4_k_zero_and_constant_blocks_are_exact():
    """No division by a zero scale; a sub-block of one value (>= 0) comes back as stored."""
    matrix = torch.zeros(2, 256)
    matrix[1, :32] = 0.5
    assert torch.equal(computed(matrix, DType.Q4_K, torch.float32)[0], matrix[0])
    assert computed(matrix, DType.Q4_K, torch.float32)[1, :32].sub(0.5).abs().max() < 1e-3


def test_a_blocks_error_is_the_ahead_of_time_converted_models():
    model = build_tiny_flux()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calibration = _calibration(model)
    blocks = ADAPTER.blocks(model)
    table = block_sensitivity(model, blocks, calibration, model_id="tiny-flux")
    assert len(table.rows) == len(blocks) * len(FORMATS) and table.inputs == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # put back
    name, _, _ = blocks[4]
    converted = copy.deepcopy(model)
    convert_block(converted.get_submodule(name), DType.Q8_0, torch.float32)
    with torch.no_grad():
        errors = []
        for args, kwargs in calibration:
            ref, y = model(*args, **kwargs)[0].double(), converted(*args, **kwargs)[0].double()
            errors.append(float((y - ref).norm() / ref.norm()))
    assert table.error(name, DType.Q8_0) == sum(errors) / 2
    assert all(row.rel_error > 0 for row in table.rows)


def test_cli_analyze_stores_the_table(tmp_path):
    from db.store import open_store

    weights = save_tiny_pipeline(tmp_path / "tiny-flux")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\na dog\n")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    result = CliRunner().invoke(app, [
        "analyze", "--model", "tiny-flux", "--weights", str(weights), "--prompts", str(prompts),
        "--steps", "2", "--height", "64", "--width", "64", "--device", "cpu", "--db", url,
        "--formats", "fp8,q8_0", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["inputs"] == 4 and len(data["rows"]) == 8 * 2
    with open_store(url) as store:
        stored = store.latest_block_analysis("tiny-flux")
    assert stored.analysis_id == data["analysis_id"] and stored.profile_id is None
    assert stored.table.to_dict() == {k: v for k, v in data.items() if k != "analysis_id"}


def test_cli_analyze_refuses_an_empty_prompts_file(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n  \n")
    result = CliRunner().invoke(app, [
        "analyze", "--model", "tiny-flux", "--weights", str(tmp_path), "--prompts", str(prompts)])
    assert result.exit_code == 2 and "holds no prompt" in result.output


def test_a_plan_linked_to_its_analysis_can_be_removed(tmp_path):
    """The link from a mixed plan to its analysis goes with the plan (foreign keys on)."""
    from db.store import open_store
    from runtime.analysis.table import BlockError, BlockOption, SensitivityTable
    from runtime.inventory import inventory
    from runtime.plan import Target, build_plan

    url = f"sqlite:///{tmp_path / 'store.db'}"
    plan = build_plan(inventory("tiny-flux"), set(), workload=Workload(64, 64, text_tokens=16),
                      target=Target("cpu", 1 << 30))
    table = SensitivityTable("tiny-flux", 1, (
        BlockError("transformer_blocks.0", "double", BlockOption(format=DType.FP8), 0.01),
        BlockError("transformer_blocks.1", "double", BlockOption(prune=0.25), 0.02,
                   (("ff.net.2", (1, 4)),)),
    ))
    with open_store(url) as store:
        analysis_id = store.save_block_analysis(table)
        plan_id = store.save_plan(plan)
        store.link_plan_to_analysis(plan_id, analysis_id)
        assert store.analysis_of_plan(plan_id) == analysis_id
        store.remove_plan(plan_id)
        assert store.analysis_of_plan(plan_id) is None
        assert store.latest_block_analysis("tiny-flux").table == table


def test_pruning_options_come_from_the_statistics_and_equal_pruning_by_hand():
    from runtime.analysis.pruning import prune_units
    from runtime.analysis.stats import record_stats
    from runtime.analysis.table import BlockOption

    model = build_tiny_flux()
    calibration = _calibration(model)
    recorder = record_stats(model)
    with torch.no_grad():
        for args, kwargs in calibration:
            model(*args, **kwargs)
    recorder.remove()
    stats = recorder.collect()
    blocks = ADAPTER.blocks(model)
    table = block_sensitivity(model, blocks, calibration, formats=(), stats=stats, prune=(0.25,))
    assert len(table.rows) == len(blocks)  # one pruning row per block, each of its MLPs pruned
    row = table.row("transformer_blocks.1", BlockOption(prune=0.25))
    assert [path for path, _ in row.pruned] == ["ff.net.2", "ff_context.net.2"]
    assert row.pruned[0][1] == stats.least_active("transformer_blocks.1", "ff.net.2", 32)
    pruned = copy.deepcopy(model)
    for path, units in row.pruned:
        prune_units(pruned.transformer_blocks[1], path, units)
    with torch.no_grad():
        errors = []
        for args, kwargs in calibration:
            ref, y = model(*args, **kwargs)[0].double(), pruned(*args, **kwargs)[0].double()
            errors.append(float((y - ref).norm() / ref.norm()))
    assert row.rel_error == sum(errors) / 2 > 0
    assert model.transformer_blocks[1].ff.net[2].in_features == 128  # put back
