"""Issue 25 (Trust II), problem 14: a smaller storage format keeps its bytes small on the host.

fp8 and Q4_K plans used to take the bf16 plan: every streamed block cast on the host (`pre`),
pinning as much as bf16 or more, and at 16 GB of host RAM even reading dequantized blocks
from the disk tier, for a step 2-5 % faster than keeping the format's own bytes (`auto`).
A plan that casts on the host or reads from disk now wins only where it is predicted more than
`HEAVY_MARGIN` faster per such cost (planner.host_ram.rank_ms), and tune names the faster plan
it passed over. Real reference profiles, the real search, the real CLI."""

from __future__ import annotations

import json

import pytest

from cli_checks import ok
from planner.host_ram import HEAVY_MARGIN

GIB = 1 << 30


def _tune(tmp_path, *args: str) -> dict:
    return json.loads(ok("tune", "--model", "flux-dev", "--vram", "6GB", "--gpu", "rtx-4060", *args,
                         "--trials", "40", "--db", f"sqlite:///{tmp_path / 'store.db'}", "--json").stdout)


@pytest.mark.parametrize("host_ram", ["16GB", "64GB"])
def test_fp8_and_q4_k_plans_keep_their_own_bytes_on_the_host(tmp_path, host_ram):
    bf16 = _tune(tmp_path, "--host-ram", host_ram)
    for storage in (("--dtype", "fp8"), ("--quant", "q4_k")):
        small = _tune(tmp_path, *storage, "--host-ram", host_ram)
        host = small["host_ram"]
        assert small["placement"]["cast"] == "auto", (storage, small["placement"])
        # the streamed blocks' bytes on the host, in RAM or on disk: fp8 is half of bf16, Q4_K less
        held = host["pinned_bytes"] + host.get("disk_bytes", 0)
        bf16_held = bf16["host_ram"]["pinned_bytes"] + bf16["host_ram"].get("disk_bytes", 0)
        assert held < 0.6 * bf16_held, (storage, host, bf16["host_ram"])
        assert host["pinned_bytes"] < bf16["host_ram"]["pinned_bytes"]
        assert small["host_ram_peak_bytes"] <= bf16["host_ram_peak_bytes"]
        assert host["disk_blocks"] == [], storage
        # what it gave up, and never slower than a peer that fits
        faster = small["passed_over"]
        assert faster["dequantized_bytes"] > 0 and faster["step_ms"] < small["step_ms"]
        assert small["step_ms"] <= faster["step_ms"] * (1 + 2 * HEAVY_MARGIN)
        assert small["step_ms"] <= min(p["step_ms"] for p in small["policies"] if p["fits"])
    if host_ram == "16GB":  # bf16's packs do not fit 16 GB: it must read from disk, fp8 and q4_k need not
        assert bf16["host_ram"]["disk_blocks"]


def test_tune_names_the_faster_plan_it_passed_over(tmp_path):
    out = ok("tune", "--model", "flux-dev", "--quant", "q4_k", "--vram", "6GB", "--gpu", "rtx-4060",
             "--host-ram", "16GB", "--trials", "40", "--db", f"sqlite:///{tmp_path / 'store.db'}").stdout
    line = next(line for line in out.splitlines() if line.strip().startswith("passed over:"))
    assert "casts its streamed blocks on the host (`pre`" in line and "must buy 5% of speed" in line
    assert "on the disk tier" not in out  # this plan reads nothing from disk
    # the formats table compares every format within the same host RAM: bf16 needs the disk there
    table = out[out.index("storage formats within both budgets"):]
    bf16 = next(row for row in table.splitlines() if row.strip().startswith("bf16"))
    assert "on disk" in bf16


def test_bf16_plans_are_not_held_back():
    """bf16 has nothing to cast: the margin never applies, the fastest plan wins as before."""
    from planner.host_peak import HostParts
    from planner.host_ram import choose
    from planner.search import Settings, search
    from profiler.reference import reference_profile
    from runtime.catalog import get_model
    from runtime.inventory import inventory
    from runtime.workload import CfgMode

    inv = inventory("flux-dev")
    profiles = {CfgMode.NONE: reference_profile("rtx-4060", "flux-dev", get_model("flux-dev").workload(),
                                                inv.storage_dtype)}
    result = search(inv, profiles, Settings(6 * GIB, trials=40))
    choice = choose(inv, profiles, result, 6 * GIB, 64 * GIB, HostParts(3 * GIB, 10 * GIB, GIB // 4))
    assert choice.passed_over is None
    assert choice.step_ms <= result.best.step_ms * (1 + 1e-9)
