"""apply_auto's life cycle (planner/app/auto.py): stored profile and plan start the next run
tuned, a family adapter wins over discovery, new input shapes are a new key, refusals."""

from __future__ import annotations

import pytest
import torch

from planner.app.auto import apply_auto
from runtime.discovery import find_blocks
from runtime.errors import UserError
from tests.conftest import build_tiny_flux
from tests.test_discovery import Plain
from tests.test_engine import flux_inputs


def _budget(model, fraction=2):
    return sum(t.numel() * t.element_size() for t in model.parameters()) // fraction


def _model(seed=0, n=10):
    torch.manual_seed(seed)
    return Plain(n=n)


def test_the_next_run_starts_tuned_from_the_store(tmp_path):
    from db.store import open_store

    url = f"sqlite:///{tmp_path}/s.db"
    x = torch.randn(2, 32)
    first_model = _model()
    with torch.no_grad():
        want = first_model(x, 1.0)
        first = apply_auto(first_model, vram=_budget(first_model), device="cpu", store=url)
        first_model(x, 1.0)
        tuned_stats, first_plan, first_id = first.stats, first.plan, first.model_id
        first.remove()
        with open_store(url) as store:
            assert store.get_profile(first.profile.id).model_id == first_id
            assert [p.plan for p in store.list_plans(model=first_id)] == [first_plan]

        again = _model()  # the same class, config, layout and inputs: the same key
        handle = apply_auto(again, vram=_budget(again), device="cpu", store=url)
        try:
            assert not handle.tuned
            assert torch.equal(again(x, 1.0), want)  # already the tuned plan
            assert handle.tuned and handle.source == "stored plan"
            assert handle.plan == first_plan and handle.stats == tuned_stats
        finally:
            handle.remove()

        other_budget = apply_auto(again, vram=_budget(again, 3), device="cpu", store=url)
        try:
            assert torch.equal(again(x, 1.0), want)
            assert other_budget.source == "stored profile"  # tuned at once, nothing measured
            assert other_budget.profile.id == first.profile.id
        finally:
            other_budget.remove()


def test_new_input_shapes_are_a_new_key(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    ids = []
    for rows in (2, 5):
        model = _model()
        handle = apply_auto(model, vram=_budget(model), device="cpu", store=url)
        with torch.no_grad():
            model(torch.randn(rows, 32), 1.0)
        assert handle.source == "measured"
        ids.append(handle.model_id)
        handle.remove()
    assert ids[0] != ids[1] and ids[0].rsplit(":", 1)[0] == ids[1].rsplit(":", 1)[0]


def test_a_family_adapter_wins_over_discovery(tmp_path):
    from runtime.families import get_family

    model = build_tiny_flux()
    inputs = flux_inputs(0)
    with torch.no_grad():
        want = model(**inputs).sample
        handle = apply_auto(model, vram=_budget(model), device="cpu", store=f"sqlite:///{tmp_path}/s.db")
        try:
            for _ in range(2):
                assert torch.equal(model(**inputs).sample, want)
            assert handle.tuned and handle.plan.model.family == "flux"
            names = [n for n, _, _ in get_family("flux").blocks(model)]
            assert [b.name for b in handle.plan.blocks] == names
            assert handle.discovery is None
        finally:
            handle.remove()


def test_refusals_are_one_clear_sentence(tmp_path):
    model = _model()
    url = f"sqlite:///{tmp_path}/s.db"
    with pytest.raises(UserError, match="vram 'lots' is not a size"):
        apply_auto(model, vram="lots", device="cpu", store=url)
    handle = apply_auto(model, vram="1GB", device="cpu", store=url)
    try:
        with pytest.raises(UserError, match="already applied"):
            apply_auto(model, vram="1GB", device="cpu", store=url)
    finally:
        handle.remove()
    model.layers[0].to(torch.float64)
    with pytest.raises(UserError, match="float32, float64, which no storage dtype"):
        apply_auto(model, vram="1GB", device="cpu", store=url)


class Wide(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.a = torch.nn.Linear(dim, 4 * dim)
        self.b = torch.nn.Linear(4 * dim, dim)

    def forward(self, x):
        return x + self.b(torch.tanh(self.a(x)))


def test_a_budget_below_the_stream_all_plan_keeps_streaming_and_says_why(tmp_path):
    """The copy bandwidth is timed on the ring's own buffers between the forwards: the ring
    must still hold what it prefetched for the next forward (a wider block in the middle)."""
    model = _model()
    model.layers[4] = Wide(32)
    model.order = list(range(10))  # in declaration order: the ring runs on without restarting
    x = torch.randn(2, 32)
    with torch.no_grad():
        want = model(x, 1.0)
        handle = apply_auto(model, vram=1024, device="cpu", store=f"sqlite:///{tmp_path}/s.db")
        try:
            with pytest.warns(UserWarning, match="keeps every block streamed"):
                assert torch.equal(model(x, 1.0), want)
            assert not handle.tuned and "no plan fits" in handle.note
            assert handle.stats.streamed_blocks == 10
            assert torch.equal(model(x, 1.0), want)
        finally:
            handle.remove()


def test_runtime_and_the_application_layer_export_apply_auto():
    import planner.app
    import runtime

    assert planner.app.apply_auto is apply_auto and runtime.apply_auto is apply_auto


def test_fp8_matrices_beside_bf16_vectors_are_fp8_storage():
    from planner.app.auto_keys import storage_of
    from runtime.dtypes import DType

    model = _model()
    model.to(torch.bfloat16)
    for block in model.layers:
        for linear in (block.a, block.b):
            linear.weight.data = linear.weight.data.to(torch.float8_e4m3fn)
    found = find_blocks(model)
    assert storage_of(model, found.adapter()) is DType.FP8
    model.layers[2].a.bias.data = model.layers[2].a.bias.data.float()
    with pytest.raises(UserError, match="no storage dtype describes"):
        storage_of(model, found.adapter())


def test_a_first_forward_that_raises_is_not_a_profile(tmp_path):
    model = _model()
    x = torch.randn(2, 32)
    with torch.no_grad():
        want = model(x, 1.0)
        handle = apply_auto(model, vram=_budget(model), device="cpu", store=f"sqlite:///{tmp_path}/s.db")
        try:
            with pytest.raises(RuntimeError):
                model(torch.randn(2, 7), 1.0)  # wrong width: fails in the first linear
            assert not handle.tuned and handle.profile is None
            assert torch.equal(model(x, 1.0), want)
            assert handle.tuned and handle.source == "measured"
            assert torch.equal(model(x, 1.0), want)
        finally:
            handle.remove()



def test_the_inputs_key_reads_shapes_and_flags_never_values():
    from planner.app.auto_keys import inputs_hash

    a = torch.randn(2, 3)
    options = {"patches": {}, "sigmas": torch.ones(4), "cond_or_uncond": [0, 1]}
    same = inputs_hash((a, 0.5), {"transformer_options": options, "flag": True})
    assert same == inputs_hash((torch.zeros(2, 3), 0.7),
                               {"flag": True, "transformer_options": {**options, "sigmas": torch.zeros(4)}})
    assert same != inputs_hash((torch.zeros(2, 4), 0.5), {"transformer_options": options, "flag": True})
    assert same != inputs_hash((a, 0.5), {"transformer_options": options, "flag": False})


def test_a_pipeline_offloads_its_denoiser(tmp_path):
    import types

    model = _model()
    pipe = types.SimpleNamespace(transformer=model, vae=None)
    x = torch.randn(2, 32)
    with torch.no_grad():
        want = model(x, 1.0)
        handle = apply_auto(pipe, vram="1MB", host_ram="64MB", device="cpu",
                            store=f"sqlite:///{tmp_path}/s.db")
        try:
            assert handle.model is model and handle.config.host_ram_bytes == 64 << 20
            for _ in range(2):
                assert torch.equal(model(x, 1.0), want)
            assert handle.tuned
        finally:
            handle.remove()
