"""Issue 22 on CPU through the real CLI: `tune --host-ram` small enough that the streamed
packs do not all fit puts blocks on the disk tier, the plan's predicted host peak stays within
the limit, and `planner apply` of that plan writes the same image as the same placement in RAM
and as the plain model."""

from __future__ import annotations

import dataclasses
import json

import pytest
from cli_checks import ok, refused
from runtime.plan import Tier, load_plan, save_plan
from tests.pipeline_fixtures import save_tiny_pipeline

@pytest.fixture
def packs(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANNER_DISK_TIER_DIR", str(tmp_path / "packs"))
    return tmp_path / "packs"


def test_host_ram_short_of_the_packs_streams_from_disk_with_the_same_image(tmp_path, packs):
    db = ["--db", f"sqlite:///{tmp_path / 'store.db'}"]
    profile = json.loads(ok("profile", "--model", "tiny-flux", "--device", "cpu",
                            "--resolution", "64x64", "--json", *db).stdout)
    assert profile["bandwidth"]["disk_read_gbps"] > 0 and profile["host_baseline_bytes"] > 0
    tune = ["tune", "--model", "tiny-flux", "--profile", str(profile["id"]), "--resolution", "64x64",
            "--trials", "20", "--json", *db]
    roomy = json.loads(ok(*tune, "--vram", "700KB", "--host-ram", "64GB").stdout)
    assert roomy["host_ram"]["disk_blocks"] == [] and roomy["host_ram"]["ram_pack_bytes"] > 0
    # without the roomy plan's packs: on a CPU profile the device is the host, so every block
    # is in host RAM whether resident or packed, and no RAM-only plan fits (a RAM-only plan
    # within HEAVY_MARGIN of a disk-tier one would win: planner.host_ram.rank_ms)
    limit = roomy["host_ram_peak_bytes"] - roomy["host_ram"]["ram_pack_bytes"]
    tight = json.loads(ok(*tune, "--vram", "700KB", "--host-ram", str(limit), "-o", tmp_path / "disk.json").stdout)
    assert tight["host_ram"]["disk_blocks"], (roomy["host_ram"], tight["host_ram"], tight["placement"], roomy["placement"])
    assert tight["host_ram_peak_bytes"] <= limit
    plan = load_plan(tmp_path / "disk.json")
    assert {b.name for b in plan.blocks if b.tier is Tier.DISK} == set(tight["host_ram"]["disk_blocks"])
    assert plan.predictions.host_peak_bytes == tight["host_ram_peak_bytes"]
    ok(*tune, "--vram", "64GB", "--host-ram", "64GB", "-o", tmp_path / "plain.json")
    assert not load_plan(tmp_path / "plain.json").streamed  # every block resident: the plain model
    in_ram = dataclasses.replace(plan, blocks=tuple(dataclasses.replace(b, tier=Tier.RAM) for b in plan.blocks))
    save_plan(in_ram, tmp_path / "ram.json")  # the same placement, every streamed block in RAM

    weights = save_tiny_pipeline(tmp_path / "pipe")
    images = {}
    for name in ("plain", "ram", "disk"):
        images[name] = tmp_path / f"{name}.png"
        out = json.loads(ok("apply", tmp_path / f"{name}.json", "--weights", weights,
                            "--prompt", "a cat", "--steps", "2", "--device", "cpu", "--seed", "3",
                            "-o", images[name], "--json", *db).stdout)
        assert set(out["phase_peak_host_bytes"]) >= {"encode", "load", "denoise", "decode"}
    # the disk tier changes where bytes come from, never what they are; and the streamed
    # blocks compute from the same offset past a 64-byte line as the loaded tensors
    # (tests/test_ring_phase.py), so every image is the plain model's, bit for bit
    assert images["disk"].read_bytes() == images["ram"].read_bytes() == images["plain"].read_bytes()
    assert list(packs.iterdir()) == []  # the pack file went with the plan


def test_too_little_host_ram_for_a_cpu_profile_is_refused(tmp_path):
    db = ["--db", f"sqlite:///{tmp_path / 'store.db'}"]
    profile = json.loads(ok("profile", "--model", "tiny-flux", "--device", "cpu",
                            "--resolution", "64x64", "--json", *db).stdout)
    line = refused("tune", "--model", "tiny-flux", "--profile", profile["id"],
                   "--resolution", "64x64", "--vram", "700KB", "--host-ram", "1MB", *db)
    assert "give --host-ram" in line
