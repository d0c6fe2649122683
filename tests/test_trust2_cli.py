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

from cli_checks import ok as _ok
from cli_checks import refused as _refused
from store_fixtures import make_plan


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


# ---------------------------------------------------------------- problem 15: misleading figures

TUNE = ("tune", "--trials", "4")


def test_a_vram_budget_larger_than_the_gpus_memory_is_refused(tmp_path):
    line = _refused(*TUNE, "--model", "tiny-flux", "--vram", "24GB", "--gpu", "rtx-4060",
                    "--db", f"sqlite:///{tmp_path / 's.db'}")
    assert "rtx-4060's 8.00 GiB" in line and "24.00 GiB" in line


def test_an_expert_models_peak_is_one_figure_wherever_tune_shows_it(tmp_path):
    """The README's A14B example: the first expert alone peaks lower than the run (9.07 vs 11.04
    GiB before); the figure tune prints, and compares with the peers', is the run's."""
    out = json.loads(_ok("tune", "--trials", "20", "--model", "wan2.2-t2v-a14b", "--resolution", "832x480",
                         "--frames", "81", "--vram", "12GB", "--gpu", "rtx-4070",
                         "--db", f"sqlite:///{tmp_path / 's.db'}", "--json").stdout)
    phases = [p["peak_vram_bytes"] for p in out["experts"]["phases"]]
    assert out["plan"]["predictions"]["peak_vram_bytes"] < max(phases), "the case where they differ"
    assert out["peak_vram_bytes"] == out["experts"]["peak_vram_bytes"] >= max(phases)


def test_models_show_counts_every_expert_the_pipeline_holds():
    shown = json.loads(_ok("models", "show", "wan2.2-t2v-a14b", "--json").stdout)
    one = shown["total"]["params"]
    assert shown["experts"] == 2 and shown["all_experts_params"] == 2 * one
    text = _ok("models", "show", "wan2.2-t2v-a14b").stdout
    assert "total (2 experts: transformer, transformer_2)" in text and "28,577,507,456" in text
    listed = {m["id"]: m for m in json.loads(_ok("models", "list", "--json").stdout)}
    assert listed["wan2.2-t2v-a14b"]["params"] == 2 * listed["wan2.1-t2v-14b"]["params"]


# ---------------------------------------------------------------- problem 18: the newcomer's path


def test_tune_says_where_the_plan_went_and_how_to_get_the_file(tmp_path):
    store = tmp_path / "s.db"
    out = _ok(*TUNE, "--model", "tiny-flux", "--vram", "1GB", "--gpu", "rtx-4060", "--db", f"sqlite:///{store}").stdout
    assert f"plan 1 in {store}" in out and "planner plans export 1 -o plan.json" in out
    written = _ok(*TUNE, "--model", "tiny-flux", "--vram", "1GB", "--gpu", "rtx-4060", "--db", f"sqlite:///{store}",
                  "-o", str(tmp_path / "p.json")).stdout
    assert f"written to:    {tmp_path / 'p.json'} (and stored as plan 1 in {store})" in written
