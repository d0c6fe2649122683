"""The catalog and `planner models list | show`: exact FLUX.1 block inventories from configs.

The FLUX.1-dev numbers are the released model's: 19 double-stream blocks of 339,831,296
parameters, 38 single-stream blocks of 141,591,808, 64,124,992 outside the blocks,
11,901,408,320 in all (the 23.8 GB bf16 checkpoint). Schnell lacks the guidance embedder.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from planner.cli import app
from runtime.catalog import all_models
from runtime.inventory import inventory

DOUBLE_PARAMS = 339_831_296
SINGLE_PARAMS = 141_591_808
DEV_NON_BLOCK = 64_124_992
DEV_TOTAL = 11_901_408_320
# guidance_embedder: Linear(256, 3072) + Linear(3072, 3072), with biases
GUIDANCE_EMBEDDER = 256 * 3072 + 3072 + 3072 * 3072 + 3072


def show(*args: str) -> dict:
    result = CliRunner().invoke(app, ["models", "show", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def dev():
    return show("flux-dev")


def test_models_list():
    result = CliRunner().invoke(app, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in json.loads(result.stdout)}
    assert set(rows) >= {"flux-dev", "flux-schnell", "tiny-flux"}
    assert rows["flux-dev"]["family"] == "flux" and rows["flux-dev"]["dtype"] == "bf16"
    table = CliRunner().invoke(app, ["models", "list"])
    assert table.exit_code == 0 and "flux-schnell" in table.stdout


def test_flux_dev_blocks(dev):
    blocks = dev["blocks"]
    double = [b for b in blocks if b["kind"] == "double"]
    single = [b for b in blocks if b["kind"] == "single"]
    assert len(double) == 19 and len(single) == 38 and len(blocks) == 57
    assert blocks[:19] == double  # execution order: all double blocks, then all single
    assert [b["name"] for b in double] == [f"transformer_blocks.{i}" for i in range(19)]
    assert [b["name"] for b in single] == [f"single_transformer_blocks.{i}" for i in range(38)]
    assert [b["index"] for b in blocks] == list(range(57))
    assert {b["params"] for b in double} == {DOUBLE_PARAMS}
    assert {b["params"] for b in single} == {SINGLE_PARAMS}
    assert {b["bytes"] for b in double} == {2 * DOUBLE_PARAMS}
    assert {b["bytes"] for b in single} == {2 * SINGLE_PARAMS}


def test_flux_dev_totals(dev):
    assert dev["model"] == "flux-dev" and dev["family"] == "flux" and dev["dtype"] == "bf16"
    assert dev["non_block"] == {
        "params": DEV_NON_BLOCK,
        "bytes": 2 * DEV_NON_BLOCK,
        "bytes_by_dtype": {"bf16": 2 * DEV_NON_BLOCK},
    }
    assert dev["total"] == {"params": DEV_TOTAL, "bytes": 2 * DEV_TOTAL}
    assert 19 * DOUBLE_PARAMS + 38 * SINGLE_PARAMS + DEV_NON_BLOCK == DEV_TOTAL


def test_flux_schnell_lacks_only_the_guidance_embedder(dev):
    schnell = show("flux-schnell")
    assert [(b["name"], b["params"]) for b in schnell["blocks"]] == [
        (b["name"], b["params"]) for b in dev["blocks"]
    ]
    assert schnell["non_block"]["params"] == DEV_NON_BLOCK - GUIDANCE_EMBEDDER == 53_895_232
    assert schnell["total"]["params"] == DEV_TOTAL - GUIDANCE_EMBEDDER


def test_tiny_flux_matches_the_real_module():
    from conftest import build_tiny_flux

    tiny = show("tiny-flux")
    model = build_tiny_flux()
    assert tiny["dtype"] == "fp32"
    assert [b["kind"] for b in tiny["blocks"]] == ["double"] * 3 + ["single"] * 5
    for block in tiny["blocks"]:
        params = sum(p.numel() for p in model.get_submodule(block["name"]).parameters())
        assert block["params"] == params
        assert block["bytes"] == block["bytes_by_dtype"]["fp32"] == 4 * params
    assert tiny["total"]["params"] == sum(p.numel() for p in model.parameters()) == 217_296


def test_fp8_bytes_keep_vectors_in_bf16():
    from runtime.catalog import get_model
    from runtime.families import get_family

    fp8 = show("flux-dev", "--dtype", "fp8")
    assert fp8["dtype"] == "fp8"
    model = get_family("flux").build(get_model("flux-dev").config, "meta")
    for name in ("transformer_blocks.0", "single_transformer_blocks.0"):
        params = list(model.get_submodule(name).parameters())
        expected = {
            "fp8": sum(p.numel() for p in params if p.dim() >= 2),
            "bf16": 2 * sum(p.numel() for p in params if p.dim() < 2),
        }
        block = next(b for b in fp8["blocks"] if b["name"] == name)
        assert block["bytes_by_dtype"] == expected
    assert fp8["blocks"][0]["bytes_by_dtype"] == {"fp8": 339_738_624, "bf16": 185_344}
    assert fp8["total"]["bytes"] == 11_904_493_696
    assert fp8["total"]["params"] == DEV_TOTAL


def test_show_table_lists_blocks_and_totals():
    result = CliRunner().invoke(app, ["models", "show", "tiny-flux"])
    assert result.exit_code == 0, result.output
    assert "single_transformer_blocks.4" in result.stdout
    assert "217,296" in result.stdout and "(non-block modules)" in result.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["show", "flux-pro"], ["unknown model 'flux-pro'", "planner models list"]),
        (["show", "flux-dev", "--dtype", "int3"], ["unknown dtype 'int3'", "bf16"]),
    ],
    ids=["model", "dtype"],
)
def test_unknown_names_exit_2_with_one_line(args, words):
    result = CliRunner().invoke(app, ["models", *args])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    for word in words:
        assert word in result.stderr
    assert "Traceback" not in result.output


def _stated_range(stated: str) -> tuple[float, float]:
    """'12B' -> (11.5e9, 12.5e9); '8.1B' -> (8.05e9, 8.15e9): the publisher's rounding."""
    import decimal

    value = decimal.Decimal(stated.removesuffix("B"))
    half = decimal.Decimal(1).scaleb(value.as_tuple().exponent) / 2
    return float((value - half) * 10**9), float((value + half) * 10**9)


@pytest.mark.parametrize("model_id", [m for m, s in all_models().items() if s.stated_params])
def test_released_models_hold_their_publishers_parameter_count(model_id):
    from runtime.catalog import get_model

    spec = get_model(model_id)
    low, high = _stated_range(spec.stated_params)
    assert low <= inventory(model_id).total_params < high, spec.stated_params
    assert spec.config_source


def test_every_family_has_a_tiny_model_and_every_model_names_its_config_source():
    from runtime.catalog import all_models
    from runtime.families import families, get_family

    models = all_models().values()
    for family in families():
        if family == "comfy-flux":
            assert get_family(family).models() == ()  # adopts flux/flux2 plans, lists none
            continue
        assert any(s.family == family and s.id.startswith("tiny-") for s in models), family
    assert all(s.config_source for s in models)
