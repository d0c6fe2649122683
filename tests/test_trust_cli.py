"""Issue 11, items 5, 6 and 8: untrusted text printed inert, no traceback from any user input
(each refusal one sentence with the fix), a locked database said within seconds, and what a
user sees (terminal-wide tables, --version, profiles list, install hints). Real CLI, real
SQLite files."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from store_fixtures import make_plan, make_profile

runner = CliRunner()


def _ok(*args: str, env: dict | None = None):
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result


def _fails(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def plan_file(tmp_path) -> Path:
    from runtime.plan import save_plan

    path = tmp_path / "plan.json"
    save_plan(make_plan(), path)
    return path


# ---------------------------------------------------------------- item 5: inert text


def test_names_from_plans_and_the_store_are_printed_inert(tmp_path, url):
    from runtime.plan import plan_to_dict

    data = plan_to_dict(make_plan(gpu="evil\x1b]0;pwned\x07\x1b[2J\u202egpu"))
    data["model"]["id"] = "m\x1b[31m"
    path = tmp_path / "evil.json"
    path.write_text(json.dumps(data))
    imported = _ok("plans", "import", str(path), "--allow-unknown-model", "--db", url).stdout
    for out in (imported, _ok("plans", "list", "--db", url).stdout, _ok("plans", "show", "1", "--db", url).stdout):
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    listed = _ok("plans", "list", "--db", url).stdout
    assert "evil\\x1b]0;pwned\\x07\\x1b[2J\\u202egpu" in listed
    shown = json.loads(_ok("plans", "show", "1", "--db", url, "--json").stdout)
    assert shown["gpu_name"] == "evil\x1b]0;pwned\x07\x1b[2J\u202egpu", "JSON keeps the value, escaped as JSON"
    line = _fails("plans", "best", "--model", "m\x1b[31m", "--vram", "8GB", "--db", url)
    assert "\x1b" not in line


def test_error_messages_are_inert(tmp_path, url):
    name = tmp_path / "bad\x1b[2J.json"
    name.write_text("{")
    line = _fails("plans", "import", str(name), "--db", url)
    assert "\x1b" not in line and "bad\\x1b[2J.json" in line


# ---------------------------------------------------------------- item 6: no tracebacks


def test_seeds_out_of_range(url, plan_file, tmp_path):
    assert "--seed 4294967296 is out of range: give 0 to 4294967295" in _fails(
        "tune", "--model", "tiny-flux", "--vram", "1GB", "--gpu", "rtx-4060", "--seed", str(2**32), "--db", url)
    assert "--seed -1 is out of range" in _fails(
        "tune", "--model", "tiny-flux", "--vram", "1GB", "--gpu", "rtx-4060", "--seed", "-1", "--db", url)
    weights = _fake_weights(tmp_path / "pipe")
    assert "--seed 1180591620717411303424 is out of range: give 0 to 2**64-1" in _fails(
        "apply", str(plan_file), "--weights", str(weights), "--prompt", "x", "--seed", str(2**70), "--db", url)


def test_ids_of_two_to_the_63_and_more(url):
    big = str(2**63)
    for args in (["plans", "show", big], ["plans", "export", big], ["plans", "rm", big], ["profiles", "show", big]):
        line = _fails(*args, "--db", url)
        assert "less than or equal to 9223372036854775807" in line and "--help`" in line, args
    line = _fails("tune", "--model", "tiny-flux", "--vram", "1GB", "--profile", big, "--db", url)
    assert "is not a profile id" in line and "planner profiles list" in line
    assert "no plan 9223372036854775807" in _fails("plans", "show", str(2**63 - 1), "--db", url)


@pytest.mark.parametrize(
    "db, message",
    [
        ("foo://host/db", "names 'foo', which SQLAlchemy does not know"),
        ("mysql://user@localhost/db", "needs the driver 'MySQLdb', which is not installed"),
        ("postgresql+psycopg2://user@localhost/db", "needs the driver 'psycopg2', which is not installed"),
        ("sqlite://", "is an in-memory SQLite database, and nothing stored in it would be kept"),
        ("sqlite:///:memory:", "in-memory SQLite database"),
        ("sqlite:///file:mem?mode=memory&uri=true", "in-memory SQLite database"),
    ],
)
def test_database_urls(db, message):
    assert message in _fails("plans", "list", "--db", db)
    assert message in _fails("db", "current", "--db", db)


def test_missing_postgres_driver_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_psycopg(name, *args, **kwargs):
        if name == "psycopg" or name.startswith("psycopg."):
            raise ModuleNotFoundError("No module named 'psycopg'", name="psycopg")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psycopg)
    line = _fails("plans", "list", "--db", "postgresql://user@localhost/db")
    assert "pip install -e '.[postgres]'" in line


def test_a_version_table_with_two_rows(url):
    from sqlalchemy import create_engine, text

    _ok("plans", "list", "--db", url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO planner_alembic_version VALUES ('0001_initial')"))
    engine.dispose()
    for args in (["plans", "list"], ["db", "current"], ["db", "upgrade"]):
        line = _fails(*args, "--db", url)
        assert "holds several revisions (0001_initial, 0007_block_analysis)" in line, args
        assert "delete every row but" in line


def _fake_weights(folder: Path, transformer: bool = True) -> Path:
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    if transformer:
        (folder / "transformer" / "config.json").write_text("{}")
        (folder / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["--height", "0"], "--height 0 is not an image size: give a multiple of 16 from 16 to 16384"),
        (["--width", "-64"], "--width -64 is not an image size"),
        (["--height", "100"], "--height 100 is not an image size"),
        (["--steps", "0"], "--steps 0 is out of range: give 1 to"),
        (["--steps", "-3"], "--steps -3 is out of range"),
        (["--guidance", "nan"], "--guidance nan is not a guidance scale"),
        (["--guidance", "inf"], "--guidance inf is not a guidance scale"),
        (["--transformer", "/dev/zero"], "--transformer /dev/zero is not a regular file"),
    ],
)
def test_apply_refuses_bad_options_before_work(tmp_path, url, plan_file, args, message):
    weights = _fake_weights(tmp_path / "pipe")
    line = _fails("apply", str(plan_file), "--weights", str(weights), "--prompt", "x",
                  "-o", str(tmp_path / "o.png"), "--db", url, *args)
    assert message in line
    assert not (tmp_path / "o.png").exists()


def test_apply_refuses_a_weights_folder_without_a_transformer(tmp_path, url, plan_file):
    bare = _fake_weights(tmp_path / "bare", transformer=False)
    line = _fails("apply", str(plan_file), "--weights", str(bare), "--prompt", "x", "--db", url)
    assert "has no transformer/config.json" in line
    empty = tmp_path / "empty"
    (empty / "transformer").mkdir(parents=True)
    (empty / "model_index.json").write_text("{}")
    (empty / "transformer" / "config.json").write_text("{}")
    assert "has no transformer weights" in _fails("apply", str(plan_file), "--weights", str(empty),
                                                  "--prompt", "x", "--db", url)
    assert "is not a folder" in _fails("apply", str(plan_file), "--weights", str(plan_file), "--prompt", "x",
                                       "--db", url)


def test_trials_zero_is_refused_like_negative(url):
    for trials in ("0", "-5"):
        line = _fails("tune", "--model", "tiny-flux", "--vram", "1GB", "--gpu", "rtx-4060", "--trials", trials,
                      "--db", url)
        assert f"--trials {trials} is out of range: give 1 to 100000" in line


def test_a_locked_database_says_so_within_seconds(tmp_path, url, plan_file):
    _ok("plans", "list", "--db", url)  # created at head
    holder = sqlite3.connect(tmp_path / "store.db", isolation_level=None, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        line = _fails("plans", "import", str(plan_file), "--db", url)
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "is locked by another process" in line and "run again" in line
    assert waited < 10, f"took {waited:.1f} s to say the database is locked"
    assert "imported" in _ok("plans", "import", str(plan_file), "--db", url).stdout


# ---------------------------------------------------------------- item 8: what a user sees


def test_version():
    from runtime.version import TOOL_VERSION

    assert _ok("--version").stdout.strip() == f"offload-planner {TOOL_VERSION}"


def test_profiles_list_and_show(url):
    from db.store import open_store

    empty = _ok("profiles", "list", "--db", url).stdout
    assert "no stored profiles" in empty and "planner profile --model" in empty
    with open_store(url) as store:
        profile_id = store.save_profile(make_profile(gpu="NVIDIA GeForce RTX 4060"))
    listed = _ok("profiles", "list", "--db", url).stdout
    assert "NVIDIA GeForce RTX 4060" in listed and "1024x1024" in listed and "flux-dev" in listed
    rows = json.loads(_ok("profiles", "list", "--model", "flux-dev", "--db", url, "--json").stdout)
    assert [r["id"] for r in rows] == [profile_id] and rows[0]["source"] == "measured"
    assert json.loads(_ok("profiles", "list", "--model", "tiny-flux", "--db", url, "--json").stdout) == []
    assert "transformer_blocks.2" in _ok("profiles", "show", str(profile_id), "--db", url).stdout
    assert "no profile 99" in _fails("profiles", "show", "99", "--db", url)


def test_plans_list_shows_dtype_and_workload(url):
    from db.store import open_store

    with open_store(url) as store:
        store.save_plan(make_plan(width=768))
    out = _ok("plans", "list", "--db", url).stdout
    assert "fp32" in out and "768x1024 b1 cfg none t16" in out
    row = json.loads(_ok("plans", "list", "--db", url, "--json").stdout)[0]
    assert (row["storage_dtype"], row["resolution"], row["batch"], row["cfg"], row["frames"]) == \
        ("fp32", "768x1024", 1, "none", 1)


def test_tables_fit_the_terminal_width(url):
    from db.store import open_store

    with open_store(url) as store:
        store.save_plan(make_plan())
    for width in (60, 100):
        out = _ok("plans", "list", "--db", url, env={"COLUMNS": str(width)}).stdout
        assert max(len(line) for line in out.splitlines()) <= width
    wide = _ok("plans", "list", "--db", url).stdout  # a pipe: one line per row
    assert len([line for line in wide.splitlines() if "tiny-flux" in line]) == 1


def test_plot_hint_names_an_install_that_works_here(plan_file, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    line = _fails("explain", str(plan_file), "--gpu", "rtx-4060", "--png", str(tmp_path / "t.png"))
    assert "pip install -e '.[plot]'" in line
    assert not (tmp_path / "t.png").exists()


def test_in_memory_from_the_environment_is_refused_but_the_library_takes_it(monkeypatch):
    monkeypatch.setenv("PLANNER_DB_URL", "sqlite://")
    result = runner.invoke(app, ["plans", "list"])
    assert result.exit_code == 2 and "in-memory SQLite database" in result.stderr, result.output
    from db.store import open_store

    with open_store("sqlite://") as store:  # a throwaway store in a notebook or a test
        assert store.list_plans() == []
