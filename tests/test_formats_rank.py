"""Issue 22 item 4: `planner tune --formats` ranks bf16, fp8, q8_0, q6_k, q5_k, q4_k and nf4
within both budgets (lossless or lossy, the file to get); where the requested format's run
cannot fit the host RAM, the refusal names the formats whose runs do."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from planner.cli import app

runner = CliRunner()
GIB = 1 << 30


def test_formats_are_ranked_within_both_budgets(tmp_path):
    result = runner.invoke(app, ["tune", "--model", "flux-dev", "--vram", "8GB", "--gpu", "rtx-4060",
                                 "--host-ram", "16GB", "--formats", "--trials", "10", "--json",
                                 "--db", f"sqlite:///{tmp_path / 'store.db'}"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["formats"]
    assert [r["storage"] for r in rows if r["storage"] in ("bf16", "fp8")] and len(rows) == 7
    assert {r["storage"] for r in rows} == {"bf16", "fp8", "q8_0", "q6_k", "q5_k", "q4_k", "nf4"}
    fits = [r for r in rows if r["fits"]]
    assert fits and all(r["host_peak_bytes"] <= 16 * GIB for r in fits)
    assert [r["step_ms"] for r in fits] == sorted(r["step_ms"] for r in fits)
    assert rows.index(fits[-1]) < len(fits)  # those that fit come first
    assert [r["lossless"] for r in rows if r["storage"] == "bf16"] == [True]
    assert all(not r["lossless"] for r in rows if r["storage"] != "bf16")
    assert "GGUF" in next(r["file"] for r in rows if r["storage"] == "q4_k")


def test_a_format_that_cannot_fit_is_refused_naming_those_that_do(tmp_path):
    # bf16 Wan 2.2 A14B parks one 26.6 GiB expert in host RAM at the switch: over 24 GB
    result = runner.invoke(app, ["tune", "--model", "wan2.2-t2v-a14b", "--vram", "12GB", "--gpu", "rtx-4070",
                                 "--host-ram", "24GB", "--trials", "10",
                                 "--db", f"sqlite:///{tmp_path / 'store.db'}"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "no plan for wan2.2-t2v-a14b" in text and "these formats fit:" in text
    assert "q4_k" in text and "bf16 (" not in text
