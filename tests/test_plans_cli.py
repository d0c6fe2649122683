"""`planner plans ...` and `planner db ...` through the real CLI, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from store_fixtures import HEAD, make_plan, measure, store_url  # noqa: F401 (fixture)



def planner(*args: str):
    from planner.cli import app

    return CliRunner().invoke(app, list(args))


def _ok(*args: str):
    result = planner(*args)
    assert result.exit_code == 0, result.output + result.stderr
    return result


def _fails(*args: str) -> str:
    """Exit 2 with one line `error: ...` on stderr and no traceback; the line."""
    result = planner(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def plan_file(tmp_path):
    from runtime.plan import save_plan

    path = tmp_path / "plan.json"
    save_plan(make_plan(step_ms=1234.0), path)
    return path


def _ids(url: str, *filters: str) -> list[int]:
    return [p["id"] for p in json.loads(_ok("plans", "list", "--db", url, "--json", *filters).stdout)]


def test_import_twice_keeps_one_row(store_url, plan_file):
    first = json.loads(_ok("plans", "import", str(plan_file), "--db", store_url, "--json").stdout)
    second = json.loads(_ok("plans", "import", str(plan_file), "--db", store_url, "--json").stdout)
    keys = ("id", "created", "catalog_model")
    assert {k: first[k] for k in keys} == {"id": first["id"], "created": True, "catalog_model": True}
    assert {k: second[k] for k in keys} == {"id": first["id"], "created": False, "catalog_model": True}
    assert _ids(store_url) == [first["id"]]
    text = _ok("plans", "import", str(plan_file), "--db", store_url).stdout
    assert f"already stored as plan {first['id']}" in text


def test_export_round_trips_the_file(store_url, plan_file, tmp_path):
    plan_id = json.loads(_ok("plans", "import", str(plan_file), "--db", store_url, "--json").stdout)["id"]
    out = _ok("plans", "export", str(plan_id), "--db", store_url).stdout
    given, exported = json.loads(plan_file.read_text()), json.loads(out)
    assert exported["predictions"] != given["predictions"], "recomputed on import (issue 25)"
    assert {**exported, "predictions": None} == {**given, "predictions": None}
    target = tmp_path / "exported.json"
    _ok("plans", "export", str(plan_id), "-o", str(target), "--db", store_url)
    assert target.read_text() == out


def test_list_show_best_rm(store_url, tmp_path):
    from db.store import open_store
    from runtime.plan import save_plan

    with open_store(store_url) as store:
        slow = store.save_plan(make_plan(step_ms=3000.0, gpu="NVIDIA GeForce RTX 4060", budget=6 << 30))
        fast = store.save_plan(make_plan(step_ms=1000.0, gpu="rtx-4060", budget=12 << 30, width=768))
        other = store.save_plan(make_plan(step_ms=10.0, gpu="NVIDIA GeForce RTX 4090", budget=24 << 30))
        measure(store, slow, 2500.0, 5 << 30)

    table = _ok("plans", "list", "--db", store_url).stdout
    assert "NVIDIA GeForce RTX 4060" in table and "6.00 GiB" in table and "2500.0" in table
    assert _ids(store_url) == [slow, fast, other]
    assert _ids(store_url, "--gpu", "RTX 4060") == [slow, fast]
    assert _ids(store_url, "--max-vram", "12GB") == [slow, fast]
    assert _ids(store_url, "--resolution", "768x1024") == [fast]
    assert _ids(store_url, "--model", "flux-dev") == []

    shown = json.loads(_ok("plans", "show", str(slow), "--db", store_url, "--json").stdout)
    assert (shown["id"], shown["runs"], shown["best_measured_ms"]) == (slow, 1, 2500.0)
    assert shown["plan"]["predictions"]["step_ms"] == 3000.0
    assert "transformer_blocks.0" in _ok("plans", "show", str(slow), "--db", store_url).stdout

    def best(*args: str) -> int:
        return json.loads(_ok("plans", "best", "--model", "tiny-flux", "--db", store_url, "--json", *args).stdout)["id"]

    # best answers for the workload asked (1024x1024 unless --resolution says otherwise)
    assert best("--vram", "12GB", "--gpu", "rtx 4060") == slow
    assert best("--vram", "12GB", "--gpu", "rtx 4060", "--resolution", "768x1024") == fast
    assert best("--vram", "8GB", "--gpu", "rtx 4060") == slow
    assert best("--vram", "24GB", "--gpu", "rtx 4090") == other
    assert "not comparable" in _fails("plans", "best", "--model", "tiny-flux", "--vram", "24GB", "--db", store_url)
    assert best("--vram", "12GB", "--gpu", "rtx 4060", "--resolution", "1024x1024") == slow
    assert "plan " in _ok("plans", "best", "--model", "tiny-flux", "--vram", "8GB", "--gpu", "rtx 4060", "--db", store_url).stdout
    line = _fails("plans", "best", "--model", "tiny-flux", "--vram", "4GB", "--gpu", "rtx 4060", "--db", store_url)
    assert "no stored plan for tiny-flux (fp32, 1024x1024, batch 1) on rtx 4060 fits 4.00 GiB" in line and "planner tune" in line

    assert json.loads(_ok("plans", "rm", str(slow), "--db", store_url, "--json").stdout)["removed"] is True
    assert _ids(store_url) == [fast, other]
    assert "no plan" in _fails("plans", "rm", str(slow), "--db", store_url)
    assert "no plan" in _fails("plans", "show", str(slow), "--db", store_url)
    assert "no plan" in _fails("plans", "export", str(slow), "--db", store_url)


def test_bad_input_writes_nothing(store_url, tmp_path, plan_file):
    missing = tmp_path / "missing.json"
    assert str(missing) in _fails("plans", "import", str(missing), "--db", store_url)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(plan_file.read_text().replace('"placement": "streamed"', '"placement": "elsewhere"', 1))
    assert "placement" in _fails("plans", "import", str(corrupt), "--db", store_url)
    truncated = tmp_path / "truncated.json"
    truncated.write_text(plan_file.read_text()[:200])
    assert "not valid JSON" in _fails("plans", "import", str(truncated), "--db", store_url)
    assert "--vram 'lots' is not a size" in _fails("plans", "best", "--model", "tiny-flux", "--vram", "lots", "--db", store_url)
    assert "--max-vram" in _fails("plans", "list", "--max-vram", "-3GB", "--db", store_url)
    assert "resolution" in _fails("plans", "list", "--resolution", "1000x1000", "--db", store_url)
    assert "resolution" in _fails("plans", "best", "--model", "m", "--vram", "8GB", "--resolution", "big", "--db", store_url)
    assert _ids(store_url) == []


def test_bad_input_does_not_create_a_database(tmp_path):
    path = tmp_path / "never.db"
    _fails("plans", "best", "--model", "tiny-flux", "--vram", "lots", "--db", f"sqlite:///{path}")
    _fails("plans", "import", str(tmp_path / "missing.json"), "--db", f"sqlite:///{path}")
    assert not path.exists()


def test_db_current_and_upgrade(store_url):
    state = json.loads(_ok("db", "current", "--db", store_url, "--json").stdout)
    assert state["current"] is None and state["head"] == HEAD and state["up_to_date"] is False
    assert "run `planner db upgrade --db" in _ok("db", "current", "--db", store_url).stdout
    done = json.loads(_ok("db", "upgrade", "--db", store_url, "--json").stdout)
    assert (done["before"], done["after"]) == (None, HEAD)
    assert f"already at {HEAD}" in _ok("db", "upgrade", "--db", store_url).stdout
    state = json.loads(_ok("db", "current", "--db", store_url, "--json").stdout)
    assert state["current"] == HEAD and state["up_to_date"] is True
    assert "up to date" in _ok("db", "current", "--db", store_url).stdout


def test_old_database_refused_by_every_plans_command(tmp_path):
    import shutil
    from pathlib import Path

    path = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "data" / "golden_0001.db", path)
    url = f"sqlite:///{path}"
    line = _fails("plans", "list", "--db", url)
    assert line == (
        f"error: database {url} is at revision 0001_initial, this tool needs {HEAD}: "
        f"run `planner db upgrade --db {url}`"
    )
    _ok("db", "upgrade", "--db", url)
    assert len(_ids(url)) == 3


def test_db_option_comes_from_the_environment(tmp_path, monkeypatch, plan_file):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("PLANNER_DB_URL", url)
    _ok("plans", "import", str(plan_file))
    assert (tmp_path / "env.db").is_file()
    assert len(_ids(url)) == 1


def test_unwritable_database_path_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    line = _fails("plans", "list", "--db", f"sqlite:///{tmp_path / 'file' / 'planner.db'}")
    assert str(tmp_path / "file") in line and "--db" in line


def test_help_does_not_import_sqlalchemy():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from planner.cli import app\n"
        "for args in (['--help'], ['plans', '--help'], ['db', '--help'], ['plans', 'list', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic', 'torch', 'db')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
