"""A plan with a placement per expert (Wan 2.2 A14B): the optional `experts` section of plan
format v1, its round trip and schema, one refusal per rule, and the store's checks."""

from __future__ import annotations

import copy
import dataclasses
import json

import jsonschema
import pytest

from runtime.catalog import get_model
from runtime.errors import PlanFormatError
from runtime.inventory import inventory
from runtime.plan import (
    HostMemory,
    Predictions,
    Target,
    build_plan,
    dumps_plan,
    loads_plan,
    plan_to_dict,
    with_experts,
)
from runtime.plan_schema import plan_schema

CREATED = "2025-01-02T03:04:05+00:00"
MODEL = "tiny-wan-a14b"


def _one(streamed_idx, depth=2, host=HostMemory.PINNED, step_ms=10.0):
    inv = inventory(MODEL)
    return build_plan(
        inv, {inv.blocks[i].name for i in streamed_idx},
        workload=get_model(MODEL).workload(), target=Target("cpu", 1 << 30),
        prefetch_depth=depth, host_memory=host,
        predictions=Predictions(step_ms, 1000, 1.0), created=CREATED,
    )


@pytest.fixture(scope="module")
def plan():
    return with_experts(_one((0, 2)), {"transformer_2": _one((1, 2, 3), 3, HostMemory.PAGEABLE, 12.5)})


def test_each_expert_reads_back_its_own_placement(plan):
    text = dumps_plan(plan)
    again = loads_plan(text)
    assert again == plan and dumps_plan(again) == text
    first, second = again.for_expert("transformer"), again.for_expert("transformer_2")
    assert [b.name for b in first.streamed] == ["blocks.0", "blocks.2"]
    assert [b.name for b in second.streamed] == ["blocks.1", "blocks.2", "blocks.3"]
    assert (second.prefetch_depth, second.host_memory, second.predictions.step_ms) == (3, HostMemory.PAGEABLE, 12.5)
    assert first.experts == () and second.experts == ()
    assert again.for_expert("transformer_3") == first  # an expert not named: the plan's own
    jsonschema.validate(json.loads(text), plan_schema())


def test_a_plan_placing_every_expert_alike_has_no_experts_section():
    one = _one((0,))
    assert with_experts(one, {}) == one
    assert "experts" not in plan_to_dict(one)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(experts=[]), "experts must be a list of 1 to 7"),
        (lambda d: d.update(experts={"transformer_2": {}}), "experts must be a list"),
        (lambda d: d["experts"][0].update(attr="transformer"), "experts[0].attr must be a pipeline attribute other than"),
        (lambda d: d["experts"][0].update(attr="transformer-2"), "experts[0].attr must be a pipeline attribute"),
        (lambda d: d["experts"].append(copy.deepcopy(d["experts"][0])), "experts[1].attr must be a pipeline attribute"),
        (lambda d: d["experts"][0].update(speed=1), "unknown key 'speed' in experts[0]"),
        (lambda d: d["experts"][0].pop("host_memory"), "experts[0] is missing the key 'host_memory'"),
        (lambda d: d["experts"][0].update(prefetch_depth=0), "experts[0].prefetch_depth must be an integer from 1 to 16"),
        (lambda d: d["experts"][0]["blocks"][1].update(placement="gpu"), "experts[0].blocks[1].placement must be one of"),
        (lambda d: d["experts"][0]["predictions"].update(step_ms=-1), "experts[0].predictions.step_ms must be a finite number"),
        (lambda d: d["experts"][0].update(blocks=[]), "experts[0].blocks must be a non-empty list"),
    ],
    ids=["empty", "object", "first-attr", "not-identifier", "twice", "unknown-key", "missing-key",
         "depth", "placement", "prediction", "no-blocks"],
)
def test_a_bad_experts_section_is_refused_naming_the_field(plan, change, message):
    data = plan_to_dict(plan)
    change(data)
    with pytest.raises(PlanFormatError, match=message.replace("[", r"\[").replace("]", r"\]")):
        loads_plan(json.dumps(data))
    with pytest.raises(jsonschema.ValidationError):  # the published schema says the same
        jsonschema.validate(data, plan_schema())


def test_the_store_checks_every_expert_against_the_model(plan, tmp_path):
    from db.plan_check import PlanRejected
    from db.store import open_store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    with open_store(url) as store:
        plan_id = store.save_plan(plan)
        assert store.get_plan(plan_id).plan == plan
        # the second expert's blocks are checked like the first's
        bad = dataclasses.replace(plan, experts=(dataclasses.replace(
            plan.experts[0], blocks=plan.experts[0].blocks[:-1]),))
        with pytest.raises(PlanRejected, match=r"\(expert transformer_2\) has 3 blocks"):
            store.save_plan(bad)
        # a model with one transformer has no second expert to place
        one = _one((0,))
        single = dataclasses.replace(
            with_experts(one, {"transformer_2": _one((1,))}),
            model=dataclasses.replace(one.model, id="tiny-wan"),
        )
        with pytest.raises(PlanRejected, match="places an expert 'transformer_2' that tiny-wan does not run"):
            store.save_plan(single)
