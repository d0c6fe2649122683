"""Issue 25 (Trust II), what the terminal shows: names with format and separator characters
printed inert, a database server that never answers given up within 10 s naming its host, and
the newcomer's path (where tune put the plan). Real CLI, real SQLite files, a real socket on
127.0.0.1 only."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from typer.testing import CliRunner

from planner.cli import app
from store_fixtures import make_plan

runner = CliRunner()


def _ok(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def _refused(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# ---------------------------------------------------------------- problem 13: terminal


@pytest.mark.parametrize("char", ["\u061c", "\u2028", "\u2029", "\u200b", "\u2060", "\ufeff", "\u0085"])
def test_format_and_separator_characters_in_names_are_escaped(tmp_path, char):
    from runtime.plan import plan_to_dict

    url = f"sqlite:///{tmp_path / 'store.db'}"
    path = tmp_path / "odd.json"
    data = plan_to_dict(make_plan(gpu=f"evil{char}gpu"))
    data["model"]["id"] = f"m{char}x"
    path.write_text(json.dumps(data))
    outs = [_ok("plans", "import", str(path), "--allow-unknown-model", "--db", url).stdout,
            _ok("plans", "list", "--db", url).stdout, _ok("plans", "show", "1", "--db", url).stdout]
    escaped = f"\\u{ord(char):04x}" if ord(char) > 0xff else f"\\x{ord(char):02x}"
    for out in outs:
        assert char not in out
    assert f"evil{escaped}gpu" in outs[1]
    line = _refused("plans", "best", "--model", f"m{char}x", "--vram", "8GB", "--db", url)
    assert char not in line and f"m{escaped}x" in line


# ---------------------------------------------------------------- problem 12: hangs


def test_a_database_server_that_never_answers_is_given_up_within_10_s_naming_the_host():
    pytest.importorskip("psycopg")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(30)
    port = server.getsockname()[1]
    held = []

    def accept() -> None:  # accept, then never say a word
        try:
            while True:
                held.append(server.accept()[0])
        except OSError:
            return

    threading.Thread(target=accept, daemon=True).start()
    start = time.monotonic()
    try:
        line = _refused("plans", "list", "--db", f"postgresql+psycopg://u@127.0.0.1:{port}/db")
    finally:
        elapsed = time.monotonic() - start
        server.close()
        for conn in held:
            conn.close()
    assert elapsed < 14, f"took {elapsed:.1f} s"
    assert held, "the client did reach the server"
    assert f"127.0.0.1:{port}" in line and "did not answer within 10 s" in line
