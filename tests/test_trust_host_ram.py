"""Issue 11, item 9: host RAM is part of the budget (`tune --host-ram`), and ties in predicted
speed go to fewer streamed bytes. Real reference profiles, the real search, the real CLI."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from planner.cli import app

runner = CliRunner()
GIB = 1 << 30


def _tune(tmp_path, *args: str) -> dict:
    result = runner.invoke(app, ["tune", "--model", "flux-dev", *args, "--trials", "40",
                                 "--db", f"sqlite:///{tmp_path / 'store.db'}", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_model_that_fits_stays_resident(tmp_path):
    data = _tune(tmp_path, "--vram", "24GB", "--gpu", "rtx-3090")
    blocks = data["placement"]["blocks"]
    assert all(c["streamed"] == 0 for c in blocks.values()), blocks
    assert data["host_ram"]["pinned_bytes"] == 0 and data["host_bytes"] == 0
    stream_all = next(p for p in data["policies"] if p["policy"] == "stream-all")
    assert data["step_ms"] < stream_all["step_ms"]
    assert data["step_ms"] <= min(p["step_ms"] for p in data["policies"] if p["fits"]) * (1 + 1e-9)


def test_fp8_cast_on_the_host_must_fit_the_host_ram(tmp_path):
    roomy = _tune(tmp_path, "--vram", "8GB", "--gpu", "rtx-4060", "--dtype", "fp8", "--host-ram", "64GB")
    # the fastest placement casts the streamed blocks on the host, over 16 GiB of them: within
    # HEAVY_MARGIN of it, the plan keeps them as fp8 (issue 25, problem 14; test_trust2_formats.py)
    assert roomy["placement"]["cast"] == "auto" and roomy["passed_over"]["dequantized_bytes"] > 16 * GIB
    tight = _tune(tmp_path, "--vram", "8GB", "--gpu", "rtx-4060", "--dtype", "fp8", "--host-ram", "16GB")
    assert tight["host_ram"]["limit_bytes"] == 16 * GIB and tight["host_ram"]["limit_source"] == "--host-ram"
    assert tight["host_ram"]["pinned_bytes"] <= 16 * GIB
    assert tight["host_ram_peak_bytes"] <= 16 * GIB  # every phase of the run, not only the packs
    assert tight["host_ram"]["pinned_bytes"] <= roomy["host_ram"]["pinned_bytes"]
    assert tight["step_ms"] >= roomy["step_ms"], "a tighter budget cannot predict faster"
    for data in (roomy, tight):  # the summary's host bytes are the pinned bytes the limit checked
        assert data["host_bytes"] == data["host_ram"]["pinned_bytes"]
    assert tight["peak_vram_bytes"] <= 8 * GIB


def test_too_little_host_ram_is_refused_in_one_sentence(tmp_path):
    """Issue 22: 1 MB cannot hold even the process: a refusal naming the host RAM that would fit."""
    result = runner.invoke(app, ["tune", "--model", "flux-dev", "--vram", "8GB", "--gpu", "rtx-4060",
                                 "--host-ram", "1MB", "--trials", "20",
                                 "--db", f"sqlite:///{tmp_path / 'store.db'}"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "no plan for flux-dev fits 1.00 MiB of host RAM" in result.output
    assert "give --host-ram 13GB or more" in result.output  # T5 + CLIP-L and the baseline


def test_the_reference_default_is_stated(tmp_path):
    from planner.host_ram import REFERENCE_HOST_RAM_BYTES

    result = runner.invoke(app, ["tune", "--model", "flux-dev", "--vram", "8GB", "--gpu", "rtx-4060",
                                 "--trials", "20", "--db", f"sqlite:///{tmp_path / 'store.db'}"])
    assert result.exit_code == 0, result.output
    assert f"of {REFERENCE_HOST_RAM_BYTES // GIB}.00 GiB (reference default (--host-ram to change))" in result.stdout
    assert "--host-ram 'lots' is not a size" in runner.invoke(
        app, ["tune", "--model", "flux-dev", "--vram", "8GB", "--gpu", "rtx-4060", "--host-ram", "lots"]).stderr


def test_ties_go_to_fewer_streamed_bytes_in_the_library():
    from planner.host_peak import HostParts
    from planner.host_ram import choose, streamed_bytes
    from planner.search import Evaluator, Settings, search
    from profiler.reference import reference_profile
    from runtime.catalog import get_model
    from runtime.inventory import inventory
    from runtime.workload import CfgMode

    inv = inventory("flux-dev")
    profiles = {CfgMode.NONE: reference_profile("rtx-3090", "flux-dev", get_model("flux-dev").workload(), inv.storage_dtype)}
    result = search(inv, profiles, Settings(24 * GIB, trials=20))
    choice = choose(inv, profiles, result, 24 * GIB, 32 * GIB, HostParts(3 * GIB, 10 * GIB, GIB // 4))
    # the whole model fits 24 GiB: nothing streams, at the search's best predicted speed
    assert choice.streamed_bytes == 0 and choice.pinned_bytes == 0
    assert streamed_bytes(Evaluator(inv, profiles), choice.scored.candidate) == 0
    assert choice.scored.step_ms <= result.best.step_ms * (1 + 1e-9)


def test_flux2_on_a_32gb_desktop(tmp_path):
    """Issue 22: FLUX.2's 24B text encoder alone is over a 32 GB machine: a one-sentence refusal
    naming the host RAM that fits, where the plan used to claim 39 GiB pageable fit 32."""
    args = ["tune", "--model", "flux2-dev", "--vram", "24GB", "--gpu", "rtx-4090", "--trials", "40",
            "--db", f"sqlite:///{tmp_path / 'store.db'}"]
    result = runner.invoke(app, [*args, "--host-ram", "32GB"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "text encoders (44.72 GiB)" in result.output and "give --host-ram 48GB or more" in result.output
    result = runner.invoke(app, [*args, "--host-ram", "64GB", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["host_ram_peak_bytes"] <= 64 * GIB
    over = [p for p in data["policies"] if p["fits_vram"] and not p["fits"]]
    assert all(p["host_peak_bytes"] > 64 * GIB for p in over)
    assert all(data["step_ms"] <= p["step_ms"] + 1e-9 for p in data["policies"] if p["fits"])
