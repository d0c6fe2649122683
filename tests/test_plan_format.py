"""Plan format v1: exact round trips, one refusal per rule, and the published JSON Schema."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from runtime.dtypes import DType
from runtime.errors import PlanFormatError, UserError
from runtime.inventory import inventory
from runtime.plan import (
    MAX_PLAN_FILE_BYTES,
    CastMode,
    HostMemory,
    Predictions,
    Target,
    build_plan,
    dumps_plan,
    load_plan,
    loads_plan,
    plan_to_dict,
    save_plan,
)
from runtime.plan_schema import plan_schema
from runtime.workload import CfgMode, Workload

CREATED = "2025-01-02T03:04:05+00:00"


@pytest.fixture(scope="module")
def tiny():
    return inventory("tiny-flux")


@pytest.fixture(scope="module")
def plans(tiny):
    """Plans that differ in every field a plan can vary."""
    fp8 = inventory("tiny-flux", DType.FP8)
    return [
        build_plan(
            tiny,
            {"transformer_blocks.1", "single_transformer_blocks.3"},
            workload=Workload(1024, 768, text_tokens=16),
            target=Target("NVIDIA GeForce RTX 4060", 8 * 2**30),
            predictions=Predictions(
                step_ms=1234.5678, peak_vram_bytes=7_000_000_123, lower_bound_ms=0.1
            ),
            profile_id=42,
            created=CREATED,
        ),
        build_plan(
            fp8,
            {b.name for b in fp8.blocks},
            workload=Workload(512, 512, batch=4, cfg=CfgMode.BATCHED, text_tokens=4096),
            target=Target("cpu", 1),
            prefetch_depth=16,
            host_memory=HostMemory.PAGEABLE,
            cast=CastMode.AUTO,
        ),
        build_plan(
            tiny, set(), workload=Workload(16, 16384, cfg=CfgMode.SEQUENTIAL),
            target=Target("H100 – 80GB ü", 2**50), prefetch_depth=1,
        ),
    ]


@pytest.fixture
def good(plans) -> dict:
    return plan_to_dict(plans[0])


# ---------------------------------------------------------------- round trips


def test_round_trip_is_exact(plans):
    for plan in plans:
        text = dumps_plan(plan)
        assert loads_plan(text) == plan
        assert dumps_plan(loads_plan(text)) == text


def test_save_and_load_on_disk(tmp_path, plans):
    path = tmp_path / "plan.json"
    for plan in plans:
        save_plan(plan, path)
        assert load_plan(path) == plan
        assert path.read_text(encoding="utf-8") == dumps_plan(plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]  # no temp file left


def test_build_plan_marks_streamed_blocks(plans, tiny):
    plan = plans[0]
    streamed = [b.name for b in plan.streamed]
    assert streamed == ["transformer_blocks.1", "single_transformer_blocks.3"]
    assert len(plan.resident) == len(tiny.blocks) - 2
    assert [b.bytes for b in plan.blocks] == [b.bytes for b in tiny.blocks]


def test_build_plan_refuses_unknown_block(tiny):
    with pytest.raises(PlanFormatError, match="transformer_blocks.99"):
        build_plan(
            tiny, {"transformer_blocks.99"}, workload=Workload(64, 64), target=Target("x", 1)
        )


# ---------------------------------------------------------------- refusals


def refused(text: str, *words: str) -> str:
    with pytest.raises(PlanFormatError) as info:
        loads_plan(text, source="plan.json")
    message = str(info.value)
    assert message.startswith("plan.json")
    for word in words:
        assert word in message, (word, message)
    assert "\n" not in message
    return message


def edited(data: dict, path: str, value=None, delete: bool = False) -> dict:
    data = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if delete:
        del node[last]
    else:
        node[last] = value
    return data


def refused_data(data: dict, *words: str) -> None:
    """Refused by the reader and by the published schema alike."""
    refused(json.dumps(data), *words)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, plan_schema())


def test_unknown_top_level_key(good):
    refused_data(edited(good, "notes", "hi"), "unknown key 'notes' in plan")


@pytest.mark.parametrize(
    "path, where",
    [("workload.steps", "workload"), ("model.revision", "model"), ("blocks.0.offset", "blocks[0]")],
)
def test_unknown_nested_key(good, path, where):
    key = path.rsplit(".", 1)[1]
    refused_data(edited(good, path, 1), f"unknown key '{key}' in {where}")


def test_duplicate_key(good):
    twice = '"prefetch_depth": 2, "prefetch_depth": 3,'
    text = json.dumps(good).replace('"prefetch_depth": 2,', twice)
    assert text.count('"prefetch_depth"') == 2
    refused(text, "'prefetch_depth' appears twice")


def test_duplicate_nested_key(good):
    text = json.dumps(good).replace('"batch": 1,', '"batch": 1, "batch": 1,')
    refused(text, "'batch' appears twice")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers(good, constant):
    text = json.dumps(good).replace('"step_ms": 1234.5678', f'"step_ms": {constant}')
    assert constant in text
    refused(text, constant)


def test_overflowing_float_is_not_finite(good):
    # refused as it is read (runtime.strict_json), naming the number, before any field is seen
    text = json.dumps(good).replace('"step_ms": 1234.5678', '"step_ms": 1e999')
    refused(text, "1e999", "finite")


@pytest.mark.parametrize("value", ["2", True, None, [2]], ids=["string", "bool", "null", "list"])
def test_wrong_type_for_integer(good, value):
    refused_data(edited(good, "prefetch_depth", value), "prefetch_depth must be an integer")


@pytest.mark.parametrize("value", [True, "1"], ids=["bool", "string"])
def test_wrong_type_for_nested_integer(good, value):
    refused_data(edited(good, "workload.batch", value), "workload.batch must be an integer")


@pytest.mark.parametrize("path", ["prefetch_depth", "workload.batch", "blocks.0.bytes"])
def test_float_for_integer(good, path):
    # JSON Schema counts 2.0 as an integer; the reader is stricter, as a plan never holds one.
    refused(json.dumps(edited(good, path, 2.0)), "must be an integer")


@pytest.mark.parametrize("value", [7, True, "", "x" * 257], ids=["int", "bool", "empty", "long"])
def test_wrong_type_for_string(good, value):
    refused_data(edited(good, "target.gpu_name", value), "gpu_name must be a non-empty string")


@pytest.mark.parametrize("value", ["1234", True, -1.0], ids=["string", "bool", "negative"])
def test_wrong_number(good, value):
    refused_data(edited(good, "predictions.step_ms", value), "predictions.step_ms must be a finite")


@pytest.mark.parametrize(
    "path, value, words",
    [
        ("prefetch_depth", 0, ["prefetch_depth", "from 1 to 16"]),
        ("prefetch_depth", 17, ["prefetch_depth", "from 1 to 16"]),
        ("workload.batch", 0, ["workload.batch", "from 1 to 64"]),
        ("workload.batch", 65, ["workload.batch", "from 1 to 64"]),
        ("blocks.0.bytes", -1, ["blocks[0].bytes"]),
        ("target.vram_budget_bytes", -8, ["target.vram_budget_bytes"]),
        ("predictions.peak_vram_bytes", -1, ["predictions.peak_vram_bytes"]),
        ("workload.height", 1000, ["multiples of 16"]),
        ("workload.width", 24, ["multiples of 16"]),
        ("workload.height", 0, ["workload.height"]),
        ("workload.text_tokens", 4097, ["workload.text_tokens"]),
        ("provenance.profile_id", 0, ["provenance.profile_id"]),
    ],
    ids=lambda v: str(v) if not isinstance(v, list) else "",
)
def test_out_of_range(good, path, value, words):
    refused_data(edited(good, path, value), *words)


@pytest.mark.parametrize(
    "path, value",
    [("host_memory", "swap"), ("blocks.1.placement", "disk"), ("blocks.0.cast", "PRE"),
     ("workload.cfg", "double"), ("model.storage_dtype", "int4")],
)
def test_unknown_choice(good, path, value):
    refused_data(edited(good, path, value), path.replace(".0.", "[0].").replace(".1.", "[1]."))


@pytest.mark.parametrize(
    "path", ["host_memory", "workload.text_tokens", "blocks.0.kind", "provenance"]
)
def test_missing_key(good, path):
    key = path.rsplit(".", 1)[-1]
    refused_data(edited(good, path, delete=True), f"missing the key '{key}'")


def test_empty_and_repeated_blocks(good):
    refused_data(edited(good, "blocks", []), "non-empty list")
    data = edited(good, "blocks.1.name", good["blocks"][0]["name"])
    refused(json.dumps(data), "appears twice in blocks")


def test_bad_timestamp(good):
    refused(json.dumps(edited(good, "provenance.created", "yesterday")), "ISO 8601")


def test_created_must_be_a_date_time_not_a_bare_date(good):
    refused(json.dumps(edited(good, "provenance.created", "2024-01-01")), "ISO 8601")


def test_newer_format_version_asks_to_upgrade(good):
    message = refused(json.dumps(edited(good, "format_version", 2)), "format_version 2")
    assert "upgrade offload-planner" in message


@pytest.mark.parametrize("value", [0, "1", None])
def test_other_format_versions(good, value):
    refused_data(edited(good, "format_version", value), "format_version")


@pytest.mark.parametrize("value", [True, 1.0], ids=["bool", "float"])
def test_format_version_must_be_the_integer_one(good, value):
    refused(json.dumps(edited(good, "format_version", value)), "format_version")


@pytest.mark.parametrize("text", ["", "{", "plan", "[1, 2]", '"plan"', "{} {}"])
def test_not_json_or_not_an_object(text):
    refused(text, "plan")


def test_integer_with_too_many_digits(good):
    text = json.dumps(good).replace('"prefetch_depth": 2', '"prefetch_depth": 1' + "0" * 5000)
    refused(text, "not valid JSON")


def test_file_over_10_mb(tmp_path, good):
    path = tmp_path / "huge.json"
    text = json.dumps(good)
    path.write_text(text[:-1] + ', "pad": "' + "x" * MAX_PLAN_FILE_BYTES + '"}', encoding="utf-8")
    with pytest.raises(PlanFormatError, match="10 MB"):
        load_plan(path)
    with pytest.raises(PlanFormatError, match="10 MB"):
        loads_plan(path.read_text(encoding="utf-8"))


def test_file_not_utf8(tmp_path, good):
    path = tmp_path / "latin1.json"
    data = edited(good, "target.gpu_name", "GeForce é")
    path.write_bytes(json.dumps(data, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(PlanFormatError, match="not UTF-8") as info:
        load_plan(path)
    assert str(path) in str(info.value)


def test_file_not_json(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("streamed: all\n", encoding="utf-8")
    with pytest.raises(PlanFormatError, match="not valid JSON") as info:
        load_plan(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(PlanFormatError, match="cannot read plan file"):
        load_plan(tmp_path / "absent.json")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(UserError):
        load_plan(tmp_path)


# ---------------------------------------------------------------- the published schema


def test_every_plan_written_validates_against_the_schema(plans, tmp_path):
    schema = plan_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for plan in plans:
        save_plan(plan, tmp_path / "p.json")
        jsonschema.validate(json.loads((tmp_path / "p.json").read_text()), schema)


def test_broken_plan_fails_the_schema(good):
    schema = plan_schema()
    jsonschema.validate(good, schema)
    for broken in (
        edited(good, "prefetch_depth", 0),
        edited(good, "workload.height", 1000),
        edited(good, "blocks.0.extra", 1),
        edited(good, "host_memory", delete=True),
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)
