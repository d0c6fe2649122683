"""Issue 11, items 1 and 2: files are written atomically only onto a regular file or a new path,
checked before any work, and read with a bound that holds while reading. Real files, FIFOs,
device nodes, real SQLite and the real CLI."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from store_fixtures import make_plan

runner = CliRunner()


def _fails(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


@pytest.fixture
def plan_file(tmp_path) -> Path:
    from runtime.plan import save_plan

    path = tmp_path / "plan.json"
    save_plan(make_plan(), path)
    return path


def _targets(tmp_path: Path) -> dict[str, Path]:
    real = tmp_path / "real.json"
    real.write_text("keep me")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    return {"symbolic link": link, "FIFO": fifo, "directory": folder, "device": Path("/dev/null"),
            "full device": Path("/dev/full")}


# ---------------------------------------------------------------- writing


def test_tune_refuses_special_targets_before_any_work(tmp_path):
    db = tmp_path / "store.db"
    for kind, target in _targets(tmp_path).items():
        line = _fails("tune", "--model", "tiny-flux", "--vram", "1GB", "--gpu", "rtx-4060", "--trials", "1",
                      "-o", str(target), "--db", f"sqlite:///{db}")
        assert f"-o {target} is a" in line and "only a regular file or a new path is written" in line, kind
        if kind in ("device", "full device"):
            assert "give a file path, e.g. ./plan.json" in line
        if kind == "symbolic link":
            assert f"give the file it points to ({tmp_path / 'real.json'}) or a new path" in line
    assert not db.exists(), "refused before the store was opened: nothing stored"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and stat.S_ISCHR(os.stat("/dev/full").st_mode)
    assert (tmp_path / "real.json").read_text() == "keep me"
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo.json").st_mode)
    assert _leftovers(tmp_path) == []


def test_tune_into_a_missing_directory_stores_nothing(tmp_path):
    db = tmp_path / "store.db"
    line = _fails("tune", "--model", "tiny-flux", "--vram", "1GB", "--gpu", "rtx-4060", "--trials", "1",
                  "-o", str(tmp_path / "missing" / "plan.json"), "--db", f"sqlite:///{db}")
    assert "the directory" in line and "does not exist" in line
    assert not db.exists()


def test_tune_writes_a_regular_file_and_replaces_one(tmp_path):
    from runtime.plan import load_plan

    target = tmp_path / "plan.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    result = runner.invoke(app, ["tune", "--model", "tiny-flux", "--vram", "1GB", "--gpu", "rtx-4060",
                                 "--trials", "2", "-o", str(target), "--db", f"sqlite:///{tmp_path / 's.db'}"])
    assert result.exit_code == 0, result.output
    assert load_plan(target).model.id == "tiny-flux"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640, "an existing file keeps its permissions"
    assert _leftovers(tmp_path) == []


def test_export_refuses_special_targets(tmp_path, plan_file):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    assert runner.invoke(app, ["plans", "import", str(plan_file), "--db", url]).exit_code == 0
    for kind, target in _targets(tmp_path).items():
        line = _fails("plans", "export", "1", "-o", str(target), "--db", url)
        assert "only a regular file or a new path is written" in line, kind
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert _leftovers(tmp_path) == []


def test_explain_png_names_what_it_writes(tmp_path, plan_file):
    folder = tmp_path / "shots"
    folder.mkdir()
    line = _fails("explain", str(plan_file), "--gpu", "rtx-4060", "--png", str(folder))
    assert f"--png {folder} is a directory" in line
    assert not (tmp_path / "shots.png").exists()
    line = _fails("explain", str(plan_file), "--gpu", "rtx-4060", "--png", str(tmp_path / "timeline"))
    assert "does not end in a suffix this output takes (.png)" in line and "timeline.png" in line
    assert not (tmp_path / "timeline.png").exists()
    png = tmp_path / "timeline.png"
    result = runner.invoke(app, ["explain", str(plan_file), "--gpu", "rtx-4060", "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"timeline written to {png}" in result.stdout
    assert _leftovers(tmp_path) == []


def _fake_weights(folder: Path) -> Path:
    """A folder that passes apply's layout checks (config files present): the -o refusal comes
    before anything is loaded from it."""
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "transformer" / "config.json").write_text("{}")
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    return folder


def test_apply_refuses_an_unwritable_image_target_before_work(tmp_path, plan_file):
    weights = _fake_weights(tmp_path / "pipe")
    base = ["apply", str(plan_file), "--weights", str(weights), "--prompt", "a cat", "--device", "cpu",
            "--db", f"sqlite:///{tmp_path / 'store.db'}"]
    line = _fails(*base, "-o", str(tmp_path / "x.xyz"))
    assert "-o " in line and "(.png, .jpg, .webp or another that)" in line and "x.png" in line
    line = _fails(*base, "-o", str(tmp_path / "nowhere" / "cat.png"))
    assert "does not exist" in line
    for kind, target in _targets(tmp_path).items():
        assert "only a regular file or a new path" in _fails(*base, "-o", str(target)), kind
    assert _leftovers(tmp_path) == []


def test_a_failing_writer_leaves_no_temporary_file(tmp_path):
    from runtime.files import atomic_path, write_atomic

    target = tmp_path / "out.png"
    with pytest.raises(RuntimeError):
        with atomic_path(target, "-o", (".png",)) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".png"
            tmp.write_bytes(b"half")
            raise RuntimeError("the renderer died")
    assert list(tmp_path.iterdir()) == []
    write_atomic(target, b"whole", "-o", (".png",))
    assert target.read_bytes() == b"whole" and _leftovers(tmp_path) == []


# ---------------------------------------------------------------- reading


def _import_fails_fast(path: str, tmp_path: Path) -> str:
    """`plans import PATH` in a thread: a hang fails the test instead of blocking the suite."""
    out: dict = {}

    def work() -> None:
        out["result"] = runner.invoke(app, ["plans", "import", path, "--db", f"sqlite:///{tmp_path / 's.db'}"])

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), f"plans import {path} hung"
    result = out["result"]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    return result.stderr.strip()


def test_import_refuses_streams_devices_and_fifos(tmp_path):
    fifo = tmp_path / "plan.fifo"
    os.mkfifo(fifo)
    line = _import_fails_fast(str(fifo), tmp_path)
    assert "is a FIFO (named pipe), not a regular file" in line
    assert "is a device, not a regular file" in _import_fails_fast("/dev/zero", tmp_path)
    read_end, write_end = os.pipe()
    try:
        line = _import_fails_fast(f"/proc/self/fd/{read_end}", tmp_path)  # what /dev/stdin is on a pipe
        assert "not a regular file" in line
    finally:
        os.close(read_end)
        os.close(write_end)


def test_import_refuses_a_file_over_the_limit(tmp_path):
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(10 * 1024 * 1024 + 1)  # sparse: costs no disk
    assert "over the 10 MB limit" in _import_fails_fast(str(big), tmp_path)


def test_the_bound_holds_while_reading_not_only_by_stat():
    from runtime.errors import UserError
    from runtime.files import read_bounded

    path = Path("/proc/self/status")  # stat says 0 bytes; reading gives far more than 16
    assert path.stat().st_size == 0
    with pytest.raises(UserError, match="over the 16-byte limit"):
        read_bounded(path, 16, "status file")
    assert len(read_bounded(path, 1 << 20, "status file")) > 16


def test_inspect_refuses_a_fifo_checkpoint_without_hanging(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", runner.invoke(app, ["models", "inspect", str(fifo)])),
                              daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "models inspect hung on a FIFO"
    assert out["r"].exit_code == 2 and "not a regular file" in out["r"].stderr, out["r"].output


def test_plan_files_without_frames_still_load_and_keep_their_text(plan_file):
    import dataclasses

    from runtime.plan import dumps_plan, load_plan, loads_plan

    plan = load_plan(plan_file)
    assert plan.workload.frames == 1 and "frames" not in json.loads(plan_file.read_text())["workload"]
    assert dumps_plan(plan) == plan_file.read_text()
    video = dataclasses.replace(plan, workload=dataclasses.replace(plan.workload, frames=9))
    assert json.loads(dumps_plan(video))["workload"]["frames"] == 9
    assert loads_plan(dumps_plan(video)).workload.frames == 9
