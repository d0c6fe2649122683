"""A profile's calibration from the measured runs of its plans: real tiny-flux profile on the CPU,
real engine runs recorded in a real SQLite store, `tune` and `explain` through the real CLI."""

from __future__ import annotations

import dataclasses
import json
import statistics
import time

import pytest
from typer.testing import CliRunner

from planner.app.calibration import load_calibration
from planner.calibration import MIN_REGIME_RUNS, Regime, calibrate
from planner.cli import app
from runtime.plan import load_plan
from runtime.workload import Workload

runner = CliRunner()
TINY = Workload(height=64, width=64, text_tokens=16)


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def stored_profile(tmp_path_factory):
    """tiny-flux measured on this CPU by the profiler, in a real SQLite store."""
    import torch

    from db.store import open_store
    from profiler.run import profile_model

    url = f"sqlite:///{tmp_path_factory.mktemp('calibration') / 'store.db'}"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        profile = profile_model("tiny-flux", TINY, None, "cpu")
    finally:
        torch.set_num_threads(before)
    with open_store(url) as store:
        return url, profile.with_id(store.save_profile(profile))


def measure_on_cpu(plan, steps: int = 3) -> float:
    """Median ms per forward of `plan` run by the engine on a random-weight tiny-flux."""
    import torch

    from runtime.apply import apply_plan
    from runtime.families import get_family
    from runtime.random_weights import random_model

    model = random_model("tiny-flux")
    handle = apply_plan(model, plan, device="cpu")
    try:
        inputs = get_family("flux").model_inputs(model, plan.workload, "cpu", torch.float32)
        times = []
        with torch.inference_mode():
            model(**inputs)  # warm-up
            for _ in range(steps):
                start = time.perf_counter()
                model(**inputs)
                times.append((time.perf_counter() - start) * 1000.0)
        return statistics.median(times)
    finally:
        handle.remove()


def _tune(url: str, profile_id: int, vram: str, out=None) -> dict:
    args = ["tune", "--model", "tiny-flux", "--vram", vram, "--profile", str(profile_id), "--trials", "20",
            "--db", url, "--json"]
    return json.loads(_ok(args + (["-o", str(out)] if out else [])))


def test_tune_and_explain_report_the_calibration_of_recorded_runs(stored_profile, tmp_path):
    from db.store import open_store
    from planner.costmodel import CostModel
    from planner.explain import layout_of
    from runtime.inventory import inventory

    url, profile = stored_profile
    first = _tune(url, profile.id, "500KB", tmp_path / "a.json")
    assert first["calibration"]["runs"] == 0 and first["calibration"]["step_ms"] == first["step_ms"]
    assert "not calibrated" in first["calibration"]["text"]
    second = _tune(url, profile.id, "2MB", tmp_path / "b.json")

    inv = inventory("tiny-flux")
    model = CostModel(inv, profile)
    ratios = []
    with open_store(url) as store:
        for name, data in (("a.json", first), ("b.json", second)):
            plan = load_plan(tmp_path / name)
            step_ms = measure_on_cpu(plan)
            store.record_run(data["plan_id"], step_ms, 0, "cpu", workload=plan.workload, steps=3, gpu_name="cpu")
            ratios.append(step_ms / model.step_ms(layout_of(plan, inv)))

    again = _tune(url, profile.id, "500KB")
    cal = again["calibration"]
    assert cal["runs"] == 2 and cal["profile_id"] == profile.id and cal["gpu_name"] == "cpu"
    assert cal["factor"] == pytest.approx(statistics.median(ratios))
    # both plans are of one regime or the other; with one run per regime, all runs' factor
    assert cal["step_ms"] == pytest.approx(again["step_ms"] * cal["factor"])
    assert "calibrated from 2 runs on cpu" in cal["text"]

    shown = _ok(["tune", "--model", "tiny-flux", "--vram", "500KB", "--profile", str(profile.id),
                 "--trials", "20", "--db", url])
    assert "calibrated:" in shown and "calibrated from 2 runs" in shown

    explained = json.loads(_ok(["explain", str(tmp_path / "a.json"), "--db", url, "--json"]))
    assert explained["calibration"]["runs"] == 2
    assert explained["calibration"]["step_ms"] == pytest.approx(explained["step_ms"] * cal["factor"])
    assert "calibrated from 2 runs" in _ok(["explain", str(tmp_path / "a.json"), "--db", url])


def test_only_comparable_runs_of_the_profiles_own_plans_count(stored_profile, tmp_path):
    from db.store import open_store
    from runtime.inventory import inventory
    from runtime.plan import Target, build_plan

    url, profile = stored_profile
    inv = inventory("tiny-flux")
    own = build_plan(inv, {b.name for b in inv.blocks}, workload=TINY, target=Target("cpu", 1 << 20),
                     prefetch_depth=2, profile_id=profile.id)
    stranger = build_plan(inv, set(), workload=TINY, target=Target("cpu", 1 << 21))  # no profile
    with open_store(url) as store:
        own_id, stranger_id = store.save_plan(own), store.save_plan(stranger)
        before = len(store.runs_of_profile(profile.id))
        kept = store.record_run(own_id, 5.0, 0, "cpu", workload=TINY, steps=2, gpu_name="cpu")
        store.record_run(own_id, 5.0, 0, "cuda:0", workload=TINY, steps=2, gpu_name="NVIDIA H100 80GB HBM3")
        store.record_run(own_id, 5.0, 0, "cpu", workload=dataclasses.replace(TINY, height=128), steps=2,
                         gpu_name="cpu")
        store.record_run(stranger_id, 5.0, 0, "cpu", workload=TINY, steps=2, gpu_name="cpu")
        runs = store.runs_of_profile(profile.id)
    assert len(runs) == before + 1 and runs[-1].run_id == kept and runs[-1].plan_id == own_id
    assert runs[-1].plan == own


def test_each_regime_gets_its_own_factor_once_it_has_enough_runs(stored_profile):
    from db.store import ProfileRun
    from planner.costmodel import CostModel
    from planner.explain import layout_of
    from runtime.inventory import inventory
    from runtime.plan import Target, build_plan

    _, measured = stored_profile
    # the same machine with a link 1000x slower: streaming every block is copy-bound
    slow = dataclasses.replace(measured.bandwidth, pinned_under_compute_gbps=measured.bandwidth.pinned_under_compute_gbps / 1000)
    profile = dataclasses.replace(measured, bandwidth=slow)
    inv = inventory("tiny-flux")
    model = CostModel(inv, profile)
    streamed = build_plan(inv, {b.name for b in inv.blocks}, workload=TINY, target=Target("cpu", 1 << 20),
                          prefetch_depth=2, profile_id=profile.id)
    resident = build_plan(inv, set(), workload=TINY, target=Target("cpu", 1 << 21), profile_id=profile.id)
    from planner.calibration import regime_of

    assert regime_of(model, layout_of(streamed, inv)) is Regime.COPY_BOUND
    assert regime_of(model, layout_of(resident, inv)) is Regime.COMPUTE_BOUND
    predicted = {id(p): model.step_ms(layout_of(p, inv)) for p in (streamed, resident)}

    def run(plan, ratio, gpu="cpu"):
        return ProfileRun(0, 1, plan, predicted[id(plan)] * ratio, 0, gpu)

    runs = [run(streamed, 1.2), run(streamed, 1.4), run(resident, 0.9), run(resident, 5.0, gpu="NVIDIA H100")]
    cal = calibrate(profile, inv, runs)
    assert cal.runs == 3 and cal.skipped == 1
    assert cal.factor == pytest.approx(1.2)
    assert MIN_REGIME_RUNS == 2
    assert cal.factor_of(Regime.COPY_BOUND) == (pytest.approx(1.3), "2 copy-bound runs")
    assert cal.factor_of(Regime.COMPUTE_BOUND) == (pytest.approx(1.2), "all 3 runs")  # one run is not enough
    assert cal.step_ms(model, layout_of(streamed, inv), 10.0) == pytest.approx(13.0)
    assert cal.peak_ratio is None and cal.peak_runs == 0  # CPU runs measure no peak


def test_no_runs_means_factor_one_and_a_reference_profile_has_none(stored_profile):
    from profiler.reference import reference_profile
    from runtime.dtypes import DType
    from runtime.inventory import inventory

    _, profile = stored_profile
    cal = calibrate(profile, inventory("tiny-flux"), [])
    assert cal.runs == 0 and cal.factor == 1.0 and cal.factor_of(Regime.COPY_BOUND) == (1.0, "all 0 runs")
    reference = reference_profile("rtx-4060", "flux-dev", Workload(1024, 1024, text_tokens=512), DType.BF16)
    assert load_calibration(None, reference) is None


@pytest.mark.gpu
def test_verify_feeds_the_next_tune_of_this_gpu(tmp_path):
    """`tune --verify` runs candidates on the GPU and records them; the next tune from the same
    stored profile of this GPU reports a calibration from those runs."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    args = ["tune", "--model", "tiny-flux", "--vram", "2GB", "--resolution", "64x64", "--trials", "20",
            "--db", url, "--json"]
    first = json.loads(_ok(args + ["--verify", "2"]))
    assert first["measured_step_ms"] > 0
    again = json.loads(_ok(args))
    assert again["profile"]["id"] == first["profile"]["id"]
    cal = again["calibration"]
    assert 1 <= cal["runs"] <= 2 and cal["gpu_name"] != "cpu" and "calibrated from" in cal["text"]
    assert cal["peak_runs"] == cal["runs"] and cal["peak_ratio"] > 0  # a GPU run measures its peak
    assert cal["step_ms"] > 0
