"""Issue 25 (Trust II), the store: no `-o` replaces a database, nothing is stored that its reader
refuses, imported predictions are recomputed, and `plans best` ranks only figures comparable on
one GPU. Real CLI, real SQLite files."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app

runner = CliRunner()
TUNE = ("tune", "--model", "tiny-flux", "--vram", "1GB", "--gpu", "rtx-4060", "--trials", "4")


def _run(*args: str):
    return runner.invoke(app, list(args))


def _ok(*args: str):
    result = _run(*args)
    assert result.exit_code == 0, result.output
    return result


def _refused(*args: str) -> str:
    result = _run(*args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _is_sqlite(path: Path) -> bool:
    return path.read_bytes()[:16] == b"SQLite format 3\x00"


# ---------------------------------------------------------------- problem 1: the store destroyed


def test_tune_output_onto_the_store_in_use_is_refused_before_anything_is_written(tmp_path):
    store = tmp_path / "store.db"
    line = _refused(*TUNE, "--db", f"sqlite:///{store}", "-o", str(store))
    assert "store" in line and "new file name" in line
    assert not store.exists(), "refused before the store was even created"


def test_no_output_replaces_an_existing_database(tmp_path):
    store, other = tmp_path / "store.db", tmp_path / "other.db"
    url = f"sqlite:///{store}"
    _ok(*TUNE, "--db", url)
    sqlite3.connect(other).execute("create table t (x)").connection.close()
    before = store.read_bytes()
    _refused("plans", "export", "1", "--db", url, "-o", str(store))
    _refused("plans", "export", "1", "--db", url, "-o", str(other))  # any database, not only ours
    _refused(*TUNE, "--db", url, "-o", str(other))
    assert store.read_bytes() == before and _is_sqlite(other)
    _ok("plans", "list", "--db", url)
    _ok("plans", "export", "1", "--db", url, "-o", str(tmp_path / "plan.json"))


# ---------------------------------------------------------------- problem 2: the store poisoned


def test_a_workload_the_plan_format_cannot_hold_is_refused_at_input_and_the_store_stays_readable(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    _ok(*TUNE, "--db", url)
    line = _refused(*TUNE, "--vram", "1024TB", "--resolution", "32768x32768", "--db", url)
    assert "32768" in line and "16384" in line
    for args in (("plans", "list"), ("plans", "show", "1"), ("plans", "best", "--model", "tiny-flux", "--vram", "1GB")):
        _ok(*args, "--db", url)
    assert len(json.loads(_ok("plans", "list", "--db", url, "--json").stdout)) == 1


def test_the_store_refuses_a_plan_its_reader_would_refuse(tmp_path):
    """One validation path: save reads the plan back through the plan file's reader first."""
    import dataclasses

    from db.plan_check import PlanRejected
    from db.store import open_store
    from runtime.plan import loads_plan

    url = f"sqlite:///{tmp_path / 'store.db'}"
    _ok(*TUNE, "--db", url, "-o", str(tmp_path / "plan.json"))
    plan = loads_plan((tmp_path / "plan.json").read_text())
    nan = dataclasses.replace(plan, predictions=dataclasses.replace(plan.predictions, step_ms=float("nan")))
    with open_store(url) as store, pytest.raises(PlanRejected, match="read back"):
        store.save_plan(nan)
    _ok("plans", "list", "--db", url)


def _tuned_file(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"plan{len(list(tmp_path.glob('plan*.json')))}.json"
    _ok(*TUNE, *extra, "--db", f"sqlite:///{tmp_path / 'maker.db'}", "-o", str(out))
    return json.loads(out.read_text())


def test_imported_predictions_are_recomputed_never_trusted(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    honest = _tuned_file(tmp_path)
    _ok(*TUNE, "--db", url)  # the same plan, made here
    liar = json.loads(json.dumps(honest))
    liar["predictions"]["step_ms"] = liar["predictions"]["lower_bound_ms"] = 0.001
    liar["prefetch_depth"] = 2  # another placement than ours, so it is stored as a new plan
    path = tmp_path / "liar.json"
    path.write_text(json.dumps(liar))
    out = json.loads(_ok("plans", "import", str(path), "--db", url, "--json").stdout)
    assert out["file_step_ms"] == 0.001 and out["predicted_step_ms"] > 0.1
    stored = json.loads(_ok("plans", "show", str(out["id"]), "--db", url, "--json").stdout)
    assert stored["predicted_step_ms"] == out["predicted_step_ms"]
    best = json.loads(_ok("plans", "best", "--model", "tiny-flux", "--vram", "1GB", "--db", url, "--json").stdout)
    assert best["chosen_by"]["step_ms"] >= honest["predictions"]["step_ms"] * 0.999


def test_an_import_whose_figures_cannot_be_recomputed_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    data = _tuned_file(tmp_path)
    data["target"]["gpu_name"] = "Some Unknown Card"
    path = tmp_path / "unknown-gpu.json"
    path.write_text(json.dumps(data))
    line = _refused("plans", "import", str(path), "--db", url)
    assert "recomputed" in line and "--profile" in line
    assert json.loads(_ok("plans", "list", "--db", url, "--json").stdout) == []


def test_best_without_gpu_never_compares_plans_for_different_gpus(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    _ok(*TUNE, "--db", url)
    _ok(*TUNE[:-4], "--gpu", "rtx-4090", "--trials", "4", "--db", url)
    line = _refused("plans", "best", "--model", "tiny-flux", "--vram", "1GB", "--db", url)
    assert "--gpu" in line and "not comparable" in line
    _ok("plans", "best", "--model", "tiny-flux", "--vram", "1GB", "--gpu", "rtx-4090", "--db", url)


# ---------------------------------------------------------------- problem 7: workloads the model cannot run


@pytest.mark.parametrize("args, words", [
    (("--model", "tiny-flux", "--frames", "5"), "images"),
    (("--model", "tiny-hunyuanimage", "--resolution", "1040x1040"), "multiple of 32"),
    (("--model", "tiny-wan", "--frames", "6"), "4k+1"),
    (("--model", "tiny-wan", "--frames", "1021"), "rotary"),
])
def test_tune_refuses_workloads_the_pipeline_would_round_or_fail_on(tmp_path, args, words):
    line = _refused("tune", *args, "--vram", "1GB", "--gpu", "rtx-4060", "--trials", "4",
                    "--db", f"sqlite:///{tmp_path / 'store.db'}")
    assert words in line
    assert not (tmp_path / "store.db").exists() or "plan" not in line.split(":")[0]


def test_import_refuses_a_workload_the_model_cannot_run(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    data = _tuned_file(tmp_path)
    for field, value, words in (("frames", 5, "images"), ("cfg", "batched", "guidance")):
        bad = json.loads(json.dumps(data))
        bad["workload"][field] = value
        path = tmp_path / f"bad-{field}.json"
        path.write_text(json.dumps(bad))
        assert words in _refused("plans", "import", str(path), "--db", url)


def test_import_refuses_quant_fields_that_contradict_the_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    data = _tuned_file(tmp_path)
    data["blocks"][0]["quant"] = ["q4_k"]
    path = tmp_path / "quant.json"
    path.write_text(json.dumps(data))
    line = _refused("plans", "import", str(path), "--db", url)
    assert "stored as q4_k but the plan stores fp32" in line


def test_explain_checks_every_experts_placement(tmp_path):
    out = tmp_path / "a14b.json"
    _ok("tune", "--model", "tiny-wan-a14b", "--vram", "1GB", "--gpu", "rtx-4060", "--trials", "4",
        "--db", f"sqlite:///{tmp_path / 's.db'}", "-o", str(out))
    data = json.loads(out.read_text())
    second = json.loads(json.dumps(data["blocks"]))
    second[0]["bytes"] += 4
    data["experts"] = [{"attr": "transformer_2", "blocks": second, "prefetch_depth": 1,
                        "host_memory": "pageable", "predictions": data["predictions"]}]
    out.write_text(json.dumps(data))
    line = _refused("explain", str(out))
    assert "expert transformer_2" in line and "bytes" in line
