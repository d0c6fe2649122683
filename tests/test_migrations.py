"""Schema history: the golden 0001 file upgrades keeping every row; old schemas are refused."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from store_fixtures import HEAD, store_url  # noqa: F401 (fixture)

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent


def _golden_module():
    spec = importlib.util.spec_from_file_location("make_golden_0001", DATA / "make_golden_0001.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


golden = _golden_module()


def _counts(url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in golden.COUNTS}
    engine.dispose()
    return counts


def _plan_hashes(url: str) -> list[tuple[str, str]]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT plan_json, content_hash FROM plans ORDER BY id")).all()
    engine.dispose()
    return [(hashlib.sha256(js.encode()).hexdigest(), digest) for js, digest in rows]


def _check_upgraded(url: str, counts: dict[str, int]) -> None:
    from db.store import open_store

    assert _counts(url) == counts
    assert all(expected == got for expected, got in _plan_hashes(url))
    with open_store(url) as store:
        plans = {p.id: p for p in store.list_plans()}
        assert plans[1].runs == 2 and plans[1].best_measured_ms == 980.5
        assert plans[1].plan.provenance.profile_id == 1
        assert str(plans[1].created) == "2025-01-01 12:00:00+00:00"
        profile = store.get_profile(1)
        assert [b.index for b in profile.blocks] == [0, 1, 2]
        assert profile.bandwidth.by_size[1].pinned_gbps == 12.5
        assert profile.machine.hostname == "box-a" and profile.machine.driver == "550.54"
        assert store.get_profile(2).is_estimate is True
        # the upgraded store works: the same plan again is found by its new hash
        assert store.save_plan(plans[2].plan) == 2


def test_golden_file_upgrade_keeps_every_row(tmp_path):
    from typer.testing import CliRunner

    from planner.cli import app

    path = tmp_path / "golden.db"
    shutil.copy(DATA / "golden_0001.db", path)
    url = f"sqlite:///{path}"
    assert _counts(url) == golden.COUNTS
    result = CliRunner().invoke(app, ["db", "upgrade", "--db", url])
    assert result.exit_code == 0, result.output
    assert f"0001_initial -> {HEAD}" in result.output
    _check_upgraded(url, golden.COUNTS)


def test_upgrade_from_0001_keeps_every_row(store_url):
    from db.migrate import schema_state, upgrade

    golden.make_0001(store_url, golden.plan_texts())
    before, after = upgrade(store_url)
    assert (before.current, after.current) == ("0001_initial", HEAD)
    assert schema_state(store_url).is_current
    _check_upgraded(store_url, golden.COUNTS)


def test_upgrade_merges_plans_stored_twice_and_keeps_their_runs(store_url):
    from db.migrate import upgrade
    from db.store import open_store

    texts = golden.plan_texts()
    golden.make_0001(store_url, [texts[0], texts[1], texts[0]])  # plan 3 repeats plan 1
    upgrade(store_url)
    assert _counts(store_url)["plans"] == 2 and _counts(store_url)["runs"] == 4
    with open_store(store_url) as store:
        first = store.get_plan(1)
        assert (first.runs, first.best_measured_ms) == (3, 650.0)


def test_downgrade_then_upgrade_keeps_every_row(store_url):
    from db.migrate import upgrade

    golden.make_0001(store_url, golden.plan_texts())
    upgrade(store_url)
    upgrade(store_url, target="0001_initial")
    assert _counts(store_url) == golden.COUNTS
    upgrade(store_url)
    _check_upgraded(store_url, golden.COUNTS)


def test_old_schema_is_refused_with_the_exact_command(tmp_path):
    from db.errors import SchemaOutOfDate
    from db.store import open_store

    path = tmp_path / "old.db"
    shutil.copy(DATA / "golden_0001.db", path)
    url = f"sqlite:///{path}"
    with pytest.raises(SchemaOutOfDate) as info:
        open_store(url)
    assert str(info.value) == (
        f"database {url} is at revision 0001_initial, this tool needs {HEAD}: "
        f"run `planner db upgrade --db {url}`"
    )
    assert _counts(url) == golden.COUNTS  # refused, nothing touched


def test_old_schema_is_refused_on_every_backend(store_url):
    from db.errors import SchemaOutOfDate
    from db.location import safe_url
    from db.store import open_store

    golden.make_0001(store_url, golden.plan_texts())
    with pytest.raises(SchemaOutOfDate, match="is at revision 0001_initial") as info:
        open_store(store_url)
    assert str(info.value).endswith(f"run `planner db upgrade --db {safe_url(store_url)}`")


def test_newer_schema_is_refused(store_url):
    from sqlalchemy import create_engine, text

    from db.errors import SchemaOutOfDate
    from db.store import open_store

    open_store(store_url).close()
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE planner_alembic_version SET version_num = '0099_future'"))
    engine.dispose()
    with pytest.raises(SchemaOutOfDate, match=r"0099_future, newer than this tool knows.*pip install -e \."):
        open_store(store_url)


def test_new_database_is_created_at_head_beside_optuna(store_url):
    from sqlalchemy import create_engine, inspect, text

    from db.migrate import VERSION_TABLE, schema_state
    from db.store import open_store

    engine = create_engine(store_url)
    with engine.begin() as conn:  # an Optuna study already lives here, with its own version table
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('v3.2.0.a')"))
    with open_store(store_url) as store:
        assert store.list_plans() == []
    assert schema_state(store_url).current == HEAD
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "v3.2.0.a"
        assert VERSION_TABLE in inspect(conn).get_table_names()
    engine.dispose()


def test_orm_models_match_the_migrations(store_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    from db.migrate import VERSION_TABLE
    from db.models import Base
    from db.store import open_store

    open_store(store_url).close()
    engine = create_engine(store_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, "compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_alembic_ini_works_from_the_repo_root(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    alembic = [sys.executable, "-m", "alembic", "-x", f"db={url}"]
    done = subprocess.run([*alembic, "upgrade", "0001_initial"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([*alembic, "current"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and "0001_initial" in done.stdout, done.stderr
    done = subprocess.run([*alembic, "history"], cwd=REPO, capture_output=True, text=True)
    assert "0005_host_ram_tier -> 0007_block_analysis (head)" in done.stdout, done.stderr
