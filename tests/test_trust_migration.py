"""Revision 0003 on real databases: the golden 0001 file, and a 0002 store, upgrade keeping
every row; plans gain their dtype, frames and body hash; old runs stay comparable only where
they ran on CUDA; downgrading to 0002 and upgrading again loses nothing."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from store_fixtures import HEAD, make_plan, store_url  # noqa: F401 (fixture)

DATA = Path(__file__).parent / "data"


def _golden():
    spec = importlib.util.spec_from_file_location("make_golden_0001", DATA / "make_golden_0001.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


golden = _golden()


def _rows(url: str, sql: str) -> list[tuple]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text(sql))]
    engine.dispose()
    return rows


def _check_at_head(url: str) -> None:
    from db.convert import plan_body_hash
    from db.store import open_store
    from runtime.plan import loads_plan

    for plan_json, body, dtype, frames, known in _rows(
        url, "SELECT plan_json, body_hash, storage_dtype, frames, catalog_model FROM plans ORDER BY id"
    ):
        plan = loads_plan(plan_json)
        assert body == plan_body_hash(plan), "the migration hashes bodies exactly as the store does"
        assert (dtype, frames, bool(known)) == (plan.model.storage_dtype.value, 1, True)
    assert _rows(url, "SELECT count(*) FROM runs WHERE height IS NULL AND steps IS NULL") == [(4,)]
    with open_store(url) as store:
        plans = {p.id: p for p in store.list_plans()}
        assert (plans[1].runs, plans[1].measured_runs, plans[1].best_measured_ms) == (2, 2, 980.5)
        # the same plan made at another time is the same stored plan
        import dataclasses

        again = dataclasses.replace(plans[2].plan, provenance=dataclasses.replace(
            plans[2].plan.provenance, created="2030-06-01T00:00:00+00:00"))
        assert store.save_plan(again) == 2
        assert store.get_profile(1).workload.frames == 1


def test_golden_0001_file_upgrades_to_0003(tmp_path):
    from typer.testing import CliRunner

    from planner.cli import app

    path = tmp_path / "golden.db"
    shutil.copy(DATA / "golden_0001.db", path)
    url = f"sqlite:///{path}"
    result = CliRunner().invoke(app, ["db", "upgrade", "--db", url])
    assert result.exit_code == 0, result.output
    assert f"0001_initial -> {HEAD}" in result.output
    _check_at_head(url)


def test_a_0002_store_upgrades_and_a_cpu_run_stops_ranking(store_url):
    from sqlalchemy import create_engine, text

    from db.migrate import schema_state, upgrade

    golden.make_0001(store_url, golden.plan_texts())
    upgrade(store_url, target="0002_plan_content_hash")
    assert schema_state(store_url).current == "0002_plan_content_hash"
    engine = create_engine(store_url)
    with engine.begin() as conn:  # a CPU run of plan 2 (a CUDA plan), recorded under 0002
        conn.execute(text("INSERT INTO runs (plan_id, step_ms, peak_vram_bytes, device, created) "
                          "VALUES (2, 5.0, 0, 'cpu', '2025-01-01 12:00:00')"))
    engine.dispose()
    before, after = upgrade(store_url)
    assert (before.current, after.current) == ("0002_plan_content_hash", HEAD)
    assert _rows(store_url, "SELECT device, comparable FROM runs WHERE plan_id = 2 ORDER BY id") == \
        [("cuda:0", True), ("cpu", False)]
    from db.store import open_store

    with open_store(store_url) as store:
        stored = store.get_plan(2)
        assert (stored.runs, stored.measured_runs, stored.best_measured_ms) == (2, 1, 1600.0)


def test_downgrade_to_0002_and_back_keeps_every_row(store_url):
    from db.migrate import upgrade

    golden.make_0001(store_url, golden.plan_texts())
    upgrade(store_url)
    upgrade(store_url, target="0002_plan_content_hash")
    counts = {t: _rows(store_url, f"SELECT count(*) FROM {t}")[0][0] for t in golden.COUNTS}
    assert counts == golden.COUNTS
    from sqlalchemy import create_engine, inspect

    engine = create_engine(store_url)
    columns = {c["name"] for c in inspect(engine).get_columns("runs")}
    engine.dispose()
    assert "comparable" not in columns and "gpu_name" not in columns, "0003's columns are gone at 0002"
    upgrade(store_url)
    _check_at_head(store_url)
