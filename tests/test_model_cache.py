"""The model cache: inventories and meta traces derived once, read back equal, never trusted
when damaged, and a shipped seed that covers the catalog at its defaults."""

from __future__ import annotations

import json

import pytest

from profiler.cache_seed import EXAMPLE_WORKLOADS
from profiler.flops import derive_trace, model_trace, trace_args
from runtime import model_cache
from runtime.catalog import all_models, get_model
from runtime.dtypes import DType, compute_dtype
from runtime.inventory import derive_inventory, inventory, inventory_args
from runtime.workload import Workload

W = Workload(height=64, width=96, text_tokens=16)


def _user_files():
    return sorted(model_cache._user_dir().glob("*.json"))


def test_derived_once_then_read_back_equal(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(model_cache, "_seed", lambda: {})
    model_trace.cache_clear()
    inv = inventory("tiny-flux", DType.FP8)
    trace = model_trace("tiny-flux", W, DType.FP32)
    assert len(_user_files()) == 2
    assert inv == derive_inventory("tiny-flux", DType.FP8)
    assert trace == derive_trace("tiny-flux", W, DType.FP32)
    model_trace.cache_clear()
    assert inventory("tiny-flux", DType.FP8) == inv and model_trace("tiny-flux", W, DType.FP32) == trace
    assert len(_user_files()) == 2


def test_a_damaged_file_is_derived_again(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(model_cache, "_seed", lambda: {})
    inventory("tiny-flux", DType.BF16)
    (path,) = _user_files()
    path.write_text("{not json")
    assert inventory("tiny-flux", DType.BF16) == derive_inventory("tiny-flux", DType.BF16)
    assert json.loads(path.read_text())["model"] == "tiny-flux"


def test_an_unwritable_cache_only_costs_time(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file where a folder must go
    monkeypatch.setattr(model_cache, "_seed", lambda: {})
    assert inventory("tiny-flux") == derive_inventory("tiny-flux", DType.FP32)


def test_the_key_changes_with_config_args_and_versions(monkeypatch):
    spec = get_model("tiny-flux")
    key = model_cache.cache_key("inventory", spec, inventory_args(DType.BF16))
    assert key != model_cache.cache_key("inventory", spec, inventory_args(DType.FP8))
    assert key != model_cache.cache_key("inventory", get_model("flux-dev"), inventory_args(DType.BF16))
    monkeypatch.setattr(model_cache, "_diffusers_version", lambda: "0.0.1")
    assert key != model_cache.cache_key("inventory", spec, inventory_args(DType.BF16))


def _require_current_seed():
    from runtime.version import TOOL_VERSION

    versions = model_cache.seed_versions()
    installed = {"diffusers": model_cache._diffusers_version(), "tool": TOOL_VERSION}
    if versions != installed:
        pytest.skip(f"the shipped seed was written for {versions}, this is {installed}: "
                    f"regenerate it with `python -m profiler.cache_seed`")


@pytest.mark.parametrize("model_id", list(all_models()))
def test_the_seed_covers_every_catalog_model_at_its_defaults(model_id):
    _require_current_seed()
    spec = get_model(model_id)
    seed = model_cache._seed()
    for storage in {spec.storage_dtype, DType.BF16, DType.FP8}:
        assert model_cache.cache_key("inventory", spec, inventory_args(storage)) in seed
    args = trace_args(spec.workload(), compute_dtype(spec.storage_dtype))
    assert model_cache.cache_key("trace", spec, args) in seed
    if model_id in EXAMPLE_WORKLOADS:  # the README's example off the defaults
        resolution, frames = EXAMPLE_WORKLOADS[model_id]
        args = trace_args(spec.workload(resolution, frames=frames), compute_dtype(spec.storage_dtype))
        assert model_cache.cache_key("trace", spec, args) in seed


@pytest.mark.parametrize("model_id", ["flux-dev", "tiny-flux"])
def test_the_seed_holds_what_deriving_gives(model_id):
    _require_current_seed()
    spec = get_model(model_id)
    seed = model_cache._seed()
    key = model_cache.cache_key("inventory", spec, inventory_args(spec.storage_dtype))
    assert seed[key] == derive_inventory(model_id, spec.storage_dtype).to_dict()
    workload, compute = spec.workload(), compute_dtype(spec.storage_dtype)
    key = model_cache.cache_key("trace", spec, trace_args(workload, compute))
    assert seed[key] == json.loads(json.dumps(derive_trace(model_id, workload, compute).to_dict()))
