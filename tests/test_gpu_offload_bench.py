"""bench/gpu_offload.py end to end on the CPU: the real tiny-flux, the real profiler, the real
search and the real engine; the CUDA-only parts are marked skipped in its JSON."""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from runtime.errors import UserError

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_offload.py"


@functools.cache
def _bench():
    """The script as a module (registered first: its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location("gpu_offload_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cpu_result(tmp_path_factory):
    import torch

    tmp = tmp_path_factory.mktemp("gpu_offload")
    out = tmp / "result.json"
    threads = torch.get_num_threads()
    try:
        code = _bench().main([
            "--model", "tiny-flux", "--device", "cpu", "--resolution", "64x64",
            "--budgets", "0.5x,640KiB,2x", "--steps", "2", "--trials", "20", "--threads", "1",
            "--db", f"sqlite:///{tmp / 'store.db'}", "-o", str(out),
        ])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return json.loads(out.read_text()), tmp


def test_every_policy_row_has_predicted_and_measured(cpu_result):
    result, _ = cpu_result
    assert result["device"] == "cpu" and result["model"] == "tiny-flux"
    assert result["versions"]["torch"] and result["versions"]["diffusers"]
    assert result["command"].startswith("python bench/gpu_offload.py --model tiny-flux")
    assert [b["budget"] for b in result["budgets"]] == ["0.5x", "640KiB", "2x"]
    assert result["budgets"][1]["budget_bytes"] == 640 * 1024
    for budget in result["budgets"]:
        rows = {r["policy"]: r for r in budget["ours"]}
        assert set(rows) == {"tuned", "resident-prefix", "spread"}, budget
        for row in rows.values():
            assert row["fits"] is True and row["error"] is None
            assert row["predicted_step_ms"] > 0 and row["measured_step_ms"] > 0
            assert row["measured_over_predicted"] == pytest.approx(row["measured_step_ms"] / row["predicted_step_ms"])
            assert len(row["forward_ms"]) == 2
            # the floor holds every plan the engine can run at this budget
            assert row["predicted_over_floor"] >= 1 - 1e-9
            assert row["predicted_peak_bytes"] <= budget["budget_bytes"]
            # what the engine placed is what the cost model counted
            assert row["engine_device_weight_bytes"] == row["predicted_device_weight_bytes"]
            assert row["measured_peak_bytes"] is None  # no allocator peak on the CPU


def test_each_budget_says_whether_the_tuned_plan_meets_the_targets(cpu_result):
    result, _ = cpu_result
    for budget in result["budgets"]:
        tuned = next(r for r in budget["ours"] if r["policy"] == "tuned")
        v = budget["verdict"]
        assert v["tuned_within_3pct_of_prediction"] == (abs(tuned["measured_over_predicted"] - 1) <= 0.03)
        assert v["tuned_within_1_05x_floor"] == (tuned["measured_over_floor"] <= 1.05)
        assert v["peak_within_budget"] is None  # no allocator peak on the CPU


def test_ours_is_bitwise_the_whole_model(cpu_result):
    result, _ = cpu_result
    assert result["whole_model"]["step_ms"] > 0
    for budget in result["budgets"]:
        for row in budget["ours"]:
            assert row["identical_arithmetic"] is True and row["bitwise_equal"] is True, row


def test_small_budgets_stream_and_large_ones_do_not(cpu_result):
    result, _ = cpu_result
    tuned = [next(r for r in b["ours"] if r["policy"] == "tuned") for b in result["budgets"]]
    assert tuned[0]["streamed_blocks"] > tuned[1]["streamed_blocks"] > 0
    assert tuned[2]["streamed_blocks"] == 0
    whole = [b["references"][0] for b in result["budgets"]]
    assert [w["predicted_fits"] for w in whole] == [False, False, True]


def test_cuda_only_parts_are_marked_skipped(cpu_result):
    result, _ = cpu_result
    assert "CUDA" in result["skipped"]["diffusers"] and "CUDA" in result["skipped"]["memory_fraction"]
    for budget in result["budgets"]:
        kinds = {r["method"]: r for r in budget["references"]}
        assert "skipped" in kinds["diffusers block_level"] and "skipped" in kinds["diffusers leaf_level"]


def test_runs_are_stored_and_calibrate_the_profile(cpu_result):
    result, tmp = cpu_result
    from db.store import open_store

    measured = {(r["streamed_blocks"], r["prefetch_depth"], r["host_memory"], r["measured_step_ms"])
                for b in result["budgets"] for r in b["ours"]}
    with open_store(f"sqlite:///{tmp / 'store.db'}") as store:
        runs = store.runs_of_profile(result["profile"]["id"])
    assert sorted(r.step_ms for r in runs) == sorted(m[3] for m in measured)
    assert result["calibration"]["runs"] == len(runs)


@pytest.mark.parametrize("text, expected", [("8,12", (8 << 30, 12 << 30)), ("700KiB", (700 << 10,)),
                                            ("1.5", (3 << 29,))])
def test_budgets_in_gib_or_with_a_unit(text, expected):
    assert tuple(b.resolve(0) for b in _bench().parse_budgets(text)) == expected


def test_budget_fractions_of_the_whole_model():
    specs = _bench().parse_budgets("0.5x,2x")
    assert [b.resolve(1000) for b in specs] == [500, 2000]


@pytest.mark.parametrize("text", ["abc", "0x", "-1x", "5x", ""])
def test_bad_budgets_are_one_clear_error(text):
    with pytest.raises(UserError, match="--budgets"):
        _bench().parse_budgets(text)


def test_a_step_is_whole_forwards_per_step():
    bench = _bench()
    assert bench.step_of([1.0, 2.0, 3.0], 1) == 2.0
    assert bench.step_of([1.0, 2.0, 3.0, 5.0], 2) == 5.5


@pytest.mark.gpu
def test_on_cuda_peaks_are_measured_and_diffusers_runs(tmp_path):
    out = tmp_path / "result.json"
    assert _bench().main([
        "--model", "tiny-flux", "--device", "cuda", "--resolution", "64x64", "--budgets", "2x",
        "--steps", "2", "--trials", "20", "--db", f"sqlite:///{tmp_path / 'store.db'}", "-o", str(out),
    ]) == 0
    result = json.loads(out.read_text())
    assert result["device_kind"] == "cuda" and result["skipped"] == {}
    assert result["whole_model"]["peak_bytes"] > 0
    for row in result["budgets"][0]["ours"]:
        assert row["measured_peak_bytes"] > 0 and row["bitwise_equal"] is True, row
    for kind in ("block_level", "leaf_level"):
        assert result["diffusers"][kind]["step_ms"] > 0, result["diffusers"][kind]
