"""Issue 11, items 3 and 4: the store keeps only plans that can run on the catalog model they
name, `plans best` answers for the workload asked and says what it ranked by, and measured runs
rank a plan only when they ran its workload on its target. Real SQLite (and PostgreSQL where
set), real plan files, the real CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from cli_checks import ok as _ok
from store_fixtures import make_plan, make_profile, measure, store_url  # noqa: F401 (fixture)

runner = CliRunner()


def _fails(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _write(tmp_path: Path, data: dict, name: str = "plan.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _plan_dict(**kw) -> dict:
    from runtime.plan import plan_to_dict

    return plan_to_dict(make_plan(**kw))


def _ids(url: str) -> list[int]:
    return [p["id"] for p in json.loads(_ok("plans", "list", "--db", url, "--json").stdout)]


# ---------------------------------------------------------------- item 3: what the store accepts


def test_a_three_block_plan_for_flux_dev_is_refused_and_never_best(store_url, tmp_path):
    data = _plan_dict()
    data["model"]["id"] = "flux-dev"
    data["model"]["storage_dtype"] = data["model"]["compute_dtype"] = "bf16"
    data["blocks"] = data["blocks"][:3]
    data["predictions"] = {"step_ms": 0.001, "peak_vram_bytes": 1, "lower_bound_ms": 0.0}
    line = _fails("plans", "import", str(_write(tmp_path, data)), "--db", store_url)
    assert "has 3 blocks but flux-dev has 57" in line
    assert _ids(store_url) == []
    assert "no stored plan for flux-dev" in _fails("plans", "best", "--model", "flux-dev", "--vram", "80GB",
                                                   "--db", store_url)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["blocks"][1].update(name="transformer_blocks.9"), "but the plan has 'transformer_blocks.9'"),
        (lambda d: d["blocks"].reverse(), "block 0 of tiny-flux is"),
        (lambda d: d["blocks"][0].update(kind="single"), "(single) there"),
        (lambda d: d["blocks"][2].update(bytes=d["blocks"][2]["bytes"] + 1), "but the plan says"),
        (lambda d: d["blocks"].append(dict(d["blocks"][-1], name="extra.0")), "has 9 blocks but tiny-flux has 8"),
        (lambda d: d["model"].update(family="sd3"), "is for a sd3 model but tiny-flux is a flux model"),
        (lambda d: d["model"].update(compute_dtype="bf16"), "computes in bf16 but stores fp32"),
        (lambda d: d["blocks"][0].update(cast="auto"), "casts 'auto', which only fp8 or quantized storage has"),
        (lambda d: d["predictions"].update(peak_vram_bytes=d["target"]["vram_budget_bytes"] + 1),
         "over its own budget"),
        (lambda d: d["predictions"].update(step_ms=0.001), "faster than its own lower bound"),
    ],
    ids=["name", "order", "kind", "bytes", "extra block", "family", "dtypes", "cast", "peak", "step"],
)
def test_plans_that_cannot_run_are_refused(store_url, tmp_path, change, message):
    data = _plan_dict()
    change(data)
    line = _fails("plans", "import", str(_write(tmp_path, data)), "--db", store_url)
    assert message in line and "planner tune" in line
    assert _ids(store_url) == []


def test_every_save_is_checked_not_only_import(store_url):
    from db.plan_check import PlanRejected
    from db.store import open_store

    plan = make_plan()
    broken = dataclasses.replace(plan, blocks=plan.blocks[:3])
    with open_store(store_url) as store:
        with pytest.raises(PlanRejected, match="has 3 blocks"):
            store.save_plan(broken)
        assert store.list_plans() == []


def test_unknown_model_only_with_the_flag_and_never_best(store_url, tmp_path):
    data = _plan_dict()
    data["model"]["id"] = "my-finetune"
    path = _write(tmp_path, data)
    line = _fails("plans", "import", str(path), "--db", store_url)
    assert "'my-finetune', which this tool's catalog does not know" in line
    assert "--allow-unknown-model" in line
    assert _ids(store_url) == []

    out = _ok("plans", "import", str(path), "--allow-unknown-model", "--db", store_url).stdout
    assert "imported" in out and "never returned by `plans best`" in out
    assert _ids(store_url) == [1]
    assert "my-finetune (unknown)" in _ok("plans", "list", "--db", store_url).stdout
    assert "unknown model 'my-finetune'" in _fails("plans", "best", "--model", "my-finetune", "--vram", "80GB",
                                                   "--db", store_url)
    from db.store import open_store

    with open_store(store_url) as store:
        assert store.best_plan("my-finetune", 80 << 30) is None  # the library agrees


# ---------------------------------------------------------------- item 4: best answers the question


def _store_plans(url: str, *plans) -> list[int]:
    from db.store import open_store

    with open_store(url) as store:
        return [store.save_plan(p) for p in plans]


def test_best_matches_the_workload_and_dtype(store_url):
    from runtime.dtypes import DType
    from runtime.inventory import inventory
    from runtime.plan import Predictions, Target, build_plan
    from runtime.workload import Workload

    def plan(dtype=DType.FP32, width=1024, batch=1, frames=1, step=1000.0):
        inv = inventory("tiny-flux", dtype)
        return build_plan(
            inv, {b.name for b in inv.blocks[:2]},
            workload=Workload(height=1024, width=width, batch=batch, text_tokens=16, frames=frames),
            target=Target("rtx-4060", 8 << 30),
            predictions=Predictions(step, 1 << 20, step / 2), created="2025-01-01T00:00:00+00:00",
        )

    ids = _store_plans(store_url, plan(step=900.0), plan(width=768, step=10.0), plan(batch=2, step=20.0),
                       plan(dtype=DType.BF16, step=30.0))
    square, wide, batch2, bf16 = ids

    def best(*args: str) -> int:
        out = _ok("plans", "best", "--model", "tiny-flux", "--vram", "8GB", "--db", store_url, "--json", *args)
        return json.loads(out.stdout)["id"]

    assert best() == square, "the 768-wide, batch-2 and bf16 plans are faster but answer other questions"
    assert best("--resolution", "768x1024") == wide
    assert best("--batch", "2") == batch2
    assert best("--dtype", "bf16") == bf16
    assert "makes images" in _fails("plans", "best", "--model", "tiny-flux", "--vram", "8GB", "--frames", "9",
                                    "--db", store_url)  # issue 25: frames on an image model refused
    assert "no stored plan" in _fails("plans", "best", "--model", "tiny-flux", "--vram", "8GB",
                                      "--text-tokens", "77", "--db", store_url)


def test_best_says_which_gpu_and_figure(store_url):
    (plan_id,) = _store_plans(store_url, make_plan(step_ms=1000.0, gpu="NVIDIA GeForce RTX 4060"))
    out = _ok("plans", "best", "--model", "tiny-flux", "--vram", "8GB", "--db", store_url).stdout
    assert f"best: plan {plan_id} for NVIDIA GeForce RTX 4060, chosen by its predicted 1000.0 ms/step" in out
    from db.store import open_store

    with open_store(store_url) as store:
        measure(store, plan_id, 800.0)
    out = _ok("plans", "best", "--model", "tiny-flux", "--vram", "8GB", "--db", store_url).stdout
    assert "chosen by its measured 800.0 ms/step (best of 1 run(s) of its workload on NVIDIA GeForce RTX 4060)" in out
    data = json.loads(_ok("plans", "best", "--model", "tiny-flux", "--vram", "8GB", "--db", store_url, "--json").stdout)
    assert data["chosen_by"] == {"gpu_name": "NVIDIA GeForce RTX 4060", "figure": "measured", "step_ms": 800.0,
                                 "comparable_runs": 1}


def test_runs_of_another_device_or_workload_never_rank_the_plan(store_url):
    from db.store import open_store

    slow, fast = _store_plans(store_url, make_plan(step_ms=3000.0, budget=6 << 30), make_plan(step_ms=2000.0))
    with open_store(store_url) as store:
        plan = store.get_plan(slow).plan
        # a CPU run of a CUDA plan, and a run at another resolution: recorded, never ranking
        store.record_run(slow, 5.0, 0, "cpu", workload=plan.workload, steps=2, gpu_name="cpu")
        other = dataclasses.replace(plan.workload, width=512)
        store.record_run(slow, 6.0, 1 << 30, "cuda:0", workload=other, steps=2, gpu_name=plan.target.gpu_name)
        store.record_run(slow, 7.0, 1 << 30, "cuda:0")  # nothing said about what ran
        stored = store.get_plan(slow)
        assert (stored.runs, stored.measured_runs, stored.best_measured_ms) == (3, 0, None)
        assert store.best_plan("tiny-flux", 8 << 30).id == fast
        # a run of its own workload on its target does rank it
        measure(store, slow, 1500.0)
        assert store.best_plan("tiny-flux", 8 << 30).id == slow

    row = json.loads(_ok("plans", "show", str(slow), "--db", store_url, "--json").stdout)
    assert (row["runs"], row["comparable_runs"], row["best_measured_ms"]) == (4, 1, 1500.0)


def test_runs_keep_their_workload_steps_and_gpu(store_url):
    from sqlalchemy import create_engine, text

    from db.store import open_store

    (plan_id,) = _store_plans(store_url, make_plan())
    with open_store(store_url) as store:
        measure(store, plan_id, 900.0, steps=28)
    engine = create_engine(store_url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT height, width, batch, cfg, text_tokens, frames, steps, gpu_name, "
                                "comparable FROM runs")).one()
    engine.dispose()
    assert tuple(row) == (1024, 1024, 1, "none", 16, 1, 28, "NVIDIA GeForce RTX 4060", True)


def test_tuning_the_same_request_twice_stores_one_plan(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    args = ["tune", "--model", "tiny-flux", "--vram", "1GB", "--gpu", "rtx-4060", "--resolution", "256x256",
            "--trials", "5", "--db", url, "--json"]
    first = json.loads(_ok(*args).stdout)["plan_id"]
    second = json.loads(_ok(*args).stdout)["plan_id"]
    assert first == second and _ids(url) == [first]


def test_tune_from_a_profile_of_another_resolution_is_refused(tmp_path):
    from db.store import open_store

    url = f"sqlite:///{tmp_path / 'store.db'}"
    with open_store(url) as store:
        profile_id = store.save_profile(make_profile())  # flux-dev, 1024x1024
    line = _fails("tune", "--model", "flux-dev", "--vram", "8GB", "--profile", str(profile_id),
                  "--resolution", "512x512", "--db", url)
    assert f"profile {profile_id} was measured at resolution 1024x1024, not 512x512" in line
    assert "--resolution 1024x1024" in line and "planner profile --model flux-dev --resolution 512x512" in line
    assert _ids(url) == []


def test_ids_beyond_64_bits_are_not_found_in_the_library(store_url):
    from db.errors import NotFound
    from db.store import open_store

    with open_store(store_url) as store:
        for call in (store.get_plan, store.get_profile, store.remove_plan):
            with pytest.raises(NotFound, match="ids are whole numbers from 1 to 9223372036854775807"):
                call(2**63)
        with pytest.raises(NotFound, match="no plan 18446744073709551616"):
            store.record_run(2**64, 1.0, 0, "cpu")
