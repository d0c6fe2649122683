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
