"""JSON Schema (draft 2020-12) of plan format v1, published by `planner plans schema`.

`runtime.plan` is the reader that counts; this schema describes the same rules for other
tools, and a test checks that every plan we write validates against it.
"""

from __future__ import annotations

from runtime.analysis.convert import FORMATS
from runtime.dtypes import DType
from runtime.plan import (
    FIRST_EXPERT,
    FORMAT_VERSION,
    MAX_BLOCKS,
    MAX_BUDGET_BYTES,
    MAX_EXPERTS,
    MAX_FRAMES,
    MAX_PREFETCH_DEPTH,
    MAX_PRUNED_SITES,
    MAX_UNITS,
    CastMode,
    HostMemory,
    Placement,
    Tier,
)
from runtime.workload import CfgMode


def _obj(properties: dict, optional: dict | None = None) -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": sorted(properties),
        "properties": {**properties, **(optional or {})},
    }


def _optional(schema: dict, **properties) -> dict:
    """`schema` that also allows the given properties, not required."""
    return {**schema, "properties": {**schema["properties"], **properties}}


def _int(low: int, high: int) -> dict:
    return {"type": "integer", "minimum": low, "maximum": high}


_STRING = {"type": "string", "minLength": 1, "maxLength": 256}
_NUMBER = {"type": "number", "minimum": 0}


def _enum(kind) -> dict:
    return {"enum": [k.value for k in kind]}


_BLOCKS = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_BLOCKS,
    "items": _optional(
        _obj(
            {
                "name": _STRING,
                "kind": _STRING,
                "bytes": _int(0, MAX_BUDGET_BYTES),
                "placement": _enum(Placement),
                "cast": _enum(CastMode),
            }
        ),
        quant={
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"enum": [d.value for d in DType if d.is_quantized]},
        },
        format={"enum": [f.value for f in FORMATS]},  # this block's own storage format
        pruned={  # MLP hidden units removed, by the path of the Linear that reads them
            "type": "object", "minProperties": 1, "maxProperties": MAX_PRUNED_SITES,
            "additionalProperties": {
                "type": "array", "minItems": 1, "maxItems": MAX_UNITS, "uniqueItems": True,
                "items": _int(0, MAX_UNITS - 1),
            },
        },
        tier=_enum(Tier),  # absent means "ram"; "disk" only for a streamed block
    ),
}
_PREDICTIONS = _obj(
    {"step_ms": _NUMBER, "peak_vram_bytes": _int(0, MAX_BUDGET_BYTES), "lower_bound_ms": _NUMBER},
    optional={"host_peak_bytes": _int(0, MAX_BUDGET_BYTES)},  # absent in plans made before it
)


def plan_schema() -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"offload-planner plan, format {FORMAT_VERSION}",
        **_obj(
            {
                "format_version": {"const": FORMAT_VERSION},
                "model": _obj(
                    {
                        "id": _STRING,
                        "family": _STRING,
                        "storage_dtype": _enum(DType),
                        "compute_dtype": _enum(DType),
                    }
                ),
                "workload": _obj(
                    {
                        "height": {**_int(16, 16384), "multipleOf": 16},
                        "width": {**_int(16, 16384), "multipleOf": 16},
                        "batch": _int(1, 64),
                        "cfg": _enum(CfgMode),
                        "text_tokens": _int(1, 4096),
                    },
                    optional={"frames": _int(1, MAX_FRAMES)},  # video only; absent means 1
                ),
                "target": _obj(
                    {"gpu_name": _STRING, "vram_budget_bytes": _int(1, MAX_BUDGET_BYTES)}
                ),
                "blocks": _BLOCKS,
                "prefetch_depth": _int(1, MAX_PREFETCH_DEPTH),
                "host_memory": _enum(HostMemory),
                "predictions": _PREDICTIONS,
                "provenance": _obj(
                    {
                        "tool_version": _STRING,
                        "profile_id": {"oneOf": [{"type": "null"}, _int(1, 2**63 - 1)]},
                        "created": {**_STRING, "format": "date-time"},
                    }
                ),
            },
            # a model with several experts placed apart (Wan 2.2 A14B); absent otherwise
            optional={"experts": {
                "type": "array", "minItems": 1, "maxItems": MAX_EXPERTS, "uniqueItems": True,
                "items": _obj({
                    "attr": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                             "not": {"const": FIRST_EXPERT}},
                    "blocks": _BLOCKS,
                    "prefetch_depth": _int(1, MAX_PREFETCH_DEPTH),
                    "host_memory": _enum(HostMemory),
                    "predictions": _PREDICTIONS,
                }),
            }},
        ),
    }
