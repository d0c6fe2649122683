"""Several processes writing one SQLite store at once; a writer killed mid-way; a held lock."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store_fixtures import make_plan

REPO = Path(__file__).parent.parent

# A writer process: waits for the go file, then saves every plan in its JSON list (and a run
# for each), printing the count after each commit. Imports no torch: plans come as text.
WRITER = r"""
import json, os, sys, time
from db.store import open_store
from runtime.plan import loads_plan
texts = json.load(open(sys.argv[2]))
while not os.path.exists(sys.argv[3]):
    time.sleep(0.005)
with open_store(sys.argv[1]) as store:
    for n, text in enumerate(texts, 1):
        plan_id = store.save_plan(loads_plan(text))
        store.record_run(plan_id, 100.0 + n, 1 << 30, "cuda:0")
        print(n, flush=True)
"""


def _plan_texts(count: int, offset: float) -> list[str]:
    from runtime.plan import dumps_plan

    base = make_plan()
    import dataclasses

    return [
        dumps_plan(dataclasses.replace(
            base, predictions=dataclasses.replace(base.predictions, step_ms=offset + i * 0.5, lower_bound_ms=0.0)
        ))
        for i in range(count)
    ]


def _start_writers(tmp_path, url: str, batches: list[list[str]]) -> tuple[list, Path]:
    go = tmp_path / "go"
    procs = []
    for i, texts in enumerate(batches):
        source = tmp_path / f"plans-{i}.json"
        source.write_text(json.dumps(texts))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(source), str(go)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    return procs, go


def _check_whole_plans(path: Path) -> int:
    """integrity_check passes and every plan row parses and matches its hash; the row count."""
    from runtime.plan import loads_plan

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = conn.execute("SELECT id, plan_json, content_hash FROM plans").fetchall()
        orphans = conn.execute("SELECT count(*) FROM runs WHERE plan_id NOT IN (SELECT id FROM plans)")
        assert orphans.fetchone() == (0,)
    for plan_id, text, digest in rows:
        loads_plan(text, source=f"plan row {plan_id}")
        assert hashlib.sha256(text.encode()).hexdigest() == digest
    return len(rows)


def test_four_processes_write_200_plans_at_once(tmp_path):
    path = tmp_path / "shared.db"
    url = f"sqlite:///{path}"
    batches = [_plan_texts(50, 1000.0 * (w + 1)) for w in range(4)]
    procs, go = _start_writers(tmp_path, url, batches)  # they also race to create the database
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert err == "" and out.split()[-1] == "50"
    assert _check_whole_plans(path) == 200
    from db.store import open_store

    with open_store(url) as store:
        plans = store.list_plans()
        assert len(plans) == 200 and all(p.runs == 1 for p in plans)


def test_killed_writer_leaves_only_whole_plans(tmp_path):
    from db.store import open_store

    path = tmp_path / "killed.db"
    url = f"sqlite:///{path}"
    open_store(url).close()
    procs, go = _start_writers(tmp_path, url, [_plan_texts(2000, 1.0)])
    proc = procs[0]
    go.touch()
    committed = 0
    while committed < 40:  # let it commit a while, then kill it mid-stream
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        committed = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    rows = _check_whole_plans(path)
    assert 40 <= rows < 2000
    with open_store(url) as store:  # and the store goes on working
        assert len(store.list_plans()) == rows
        new_id = store.save_plan(make_plan(step_ms=99999.0))
        assert store.get_plan(new_id).plan.predictions.step_ms == 99999.0


def test_lock_held_past_the_retries_is_a_clear_error(tmp_path):
    from db.errors import DatabaseLocked
    from db.store import open_store

    path = tmp_path / "locked.db"
    url = f"sqlite:///{path}"
    with open_store(url) as store:
        first = store.save_plan(make_plan(step_ms=1.0))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with open_store(url, busy_timeout_s=0.05, retries=2) as store:
            assert [p.id for p in store.list_plans()] == [first]  # WAL: reads go on
            started = time.perf_counter()
            with pytest.raises(DatabaseLocked) as info:
                store.save_plan(make_plan(step_ms=2.0))
            assert time.perf_counter() - started < 5
            message = str(info.value)
            assert str(path) in message and "locked" in message and "run again" in message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with open_store(url) as store:
        assert len(store.list_plans()) == 1  # nothing written half-way
        store.save_plan(make_plan(step_ms=2.0))
        assert len(store.list_plans()) == 2


def test_sqlite_store_uses_wal_and_a_busy_timeout(tmp_path):
    from sqlalchemy import text

    from db.store import open_store

    with open_store(f"sqlite:///{tmp_path / 'w.db'}", busy_timeout_s=3.0) as store:
        with store._engine.connect() as conn:  # noqa: SLF001 - checking the engine's settings
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 3000
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
