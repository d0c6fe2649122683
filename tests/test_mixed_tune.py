"""Issue 24 end to end on the tiny FLUX, through the real CLI and a real SQLite store: record
activation statistics over two runs, measure per-block sensitivity (`planner analyze`), tune a
mixed plan under `--max-error` on a transfer-bound profile (predicted faster than the uniform
plan at the same budget), and `planner apply` it: the image equals the one of the model whose
blocks were converted ahead of time, and the denoiser's output is bitwise that model's."""

from __future__ import annotations

import json

import pytest
import torch

from cli_checks import ok, refused
from runtime.analysis.convert import convert_block
from runtime.analysis.stats import load_stats
from runtime.apply import apply_plan
from runtime.families import get_family
from runtime.inventory import inventory
from runtime.plan import Target, build_plan, load_plan, save_plan
from runtime.workload import Workload
from test_costmodel import profile_for
from tests.pipeline_fixtures import save_tiny_pipeline

BUDGET = 300_000  # bytes: the plain blocks stream through one slot; the mixed ones do not all fit either
WORKLOAD = Workload(64, 64, text_tokens=16)


def _uniform_plan(path):
    plan = build_plan(inventory("tiny-flux"), set(), workload=WORKLOAD, target=Target("cpu", 1 << 30))
    save_plan(plan, path)
    return path


def test_stats_analyze_tune_mixed_and_apply(tmp_path):
    from db.store import open_store
    from diffusers import FluxPipeline

    weights = save_tiny_pipeline(tmp_path / "tiny-flux")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    image_args = ["--prompt", "a cat", "--steps", "2", "--height", "64", "--width", "64",
                  "--device", "cpu", "--db", url]
    uniform = _uniform_plan(tmp_path / "uniform.json")
    stats = tmp_path / "stats.safetensors"
    for _ in range(2):
        ok("apply", uniform, "--weights", weights, "-o", tmp_path / "u.png",
             "--record-stats", stats, *image_args)
    assert load_stats(stats).runs == 2

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    ok("analyze", "--model", "tiny-flux", "--weights", weights, "--prompts", prompts,
         "--steps", "2", "--height", "64", "--width", "64", "--device", "cpu", "--db", url)

    with open_store(url) as store:
        profile_id = store.save_profile(profile_for(inventory("tiny-flux"), 0.05,
                                                    under_compute_gbps=0.001))
    mixed_path = tmp_path / "mixed.json"
    result = ok("tune", "--model", "tiny-flux", "--vram", BUDGET, "--profile", profile_id,
                  "--max-error", "0.5", "--trials", "20", "--db", url, "-o", mixed_path, "--json")
    data = json.loads(result.stdout)
    mixed = data["mixed"]
    assert mixed["options"] and mixed["predicted_error"] <= 0.5
    assert data["step_ms"] < mixed["uniform_step_ms"]  # fewer bytes over a slow link
    plan = load_plan(mixed_path)
    with open_store(url) as store:  # the store keeps the analysis the plan was made from
        assert store.analysis_of_plan(data["plan_id"]) == mixed["analysis_id"]
        assert store.latest_block_analysis("tiny-flux").analysis_id == mixed["analysis_id"]
    assert {b.name: b.format.value for b in plan.blocks if b.format} == mixed["options"]
    assert plan.streamed and plan.predictions.peak_vram_bytes <= BUDGET

    # the model whose blocks were converted ahead of time, saved as a pipeline of its own
    pipe = FluxPipeline.from_pretrained(weights, local_files_only=True)
    converted = pipe.transformer
    for block in plan.blocks:
        if block.format is not None:
            convert_block(converted.get_submodule(block.name), block.format, torch.float32)
    pipe.save_pretrained(tmp_path / "converted", safe_serialization=True)
    ok("apply", mixed_path, "--weights", weights, "-o", tmp_path / "mixed.png", *image_args)
    ok("apply", uniform, "--weights", tmp_path / "converted", "-o", tmp_path / "aot.png",
         *image_args)
    assert (tmp_path / "mixed.png").read_bytes() == (tmp_path / "aot.png").read_bytes()

    # and the denoiser's output itself, bit for bit
    engine = _own_memory(FluxPipeline.from_pretrained(weights, local_files_only=True).transformer)
    converted = _own_memory(converted)
    torch.manual_seed(5)
    inputs = get_family("flux").model_inputs(engine, WORKLOAD, "cpu", torch.float32)
    handle = apply_plan(engine, plan, "cpu")
    with torch.no_grad():
        got = engine(**inputs)[0]
        want = converted(**inputs)[0]
    handle.remove()
    assert torch.equal(got, want)


def _own_memory(model):
    for tensor in list(model.parameters()) + list(model.buffers()):
        tensor.data = tensor.data.clone()
    return model


def test_max_error_without_an_analysis_is_refused(tmp_path):
    line = refused("tune", "--model", "tiny-flux", "--vram", "1GB", "--gpu", "rtx-4060", "--max-error",
                   "0.1", "--db", f"sqlite:///{tmp_path / 'store.db'}")
    assert "run `planner analyze" in line


def test_tune_prunes_the_least_active_units_the_statistics_found(tmp_path):
    """Pruning options only: analyze measures them from recorded statistics, tune picks some,
    and the engine runs the plan equal to the model pruned by hand, bitwise."""
    from db.store import open_store
    from diffusers import FluxPipeline

    from runtime.analysis.pruning import prune_units

    weights = save_tiny_pipeline(tmp_path / "tiny-flux")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    stats = tmp_path / "stats.safetensors"
    ok("apply", _uniform_plan(tmp_path / "uniform.json"), "--weights", weights, "-o",
         tmp_path / "u.png", "--record-stats", stats, "--prompt", "a cat", "--steps", "2",
         "--device", "cpu", "--db", url)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    ok("analyze", "--model", "tiny-flux", "--weights", weights, "--prompts", prompts,
         "--steps", "2", "--height", "64", "--width", "64", "--device", "cpu", "--db", url,
         "--formats", "", "--stats", stats, "--prune", "0.25")
    with open_store(url) as store:
        profile_id = store.save_profile(profile_for(inventory("tiny-flux"), 0.05,
                                                    under_compute_gbps=0.001))
    out = tmp_path / "pruned.json"
    data = json.loads(ok("tune", "--model", "tiny-flux", "--vram", BUDGET, "--profile",
                           profile_id, "--max-error", "1.0", "--trials", "10", "--db", url,
                           "-o", out, "--json").stdout)
    assert set(data["mixed"]["options"].values()) == {"prune:0.25"}
    assert data["step_ms"] < data["mixed"]["uniform_step_ms"]
    plan = load_plan(out)
    pruned = {b.name: b.pruned for b in plan.blocks if b.pruned}
    assert set(pruned) == set(data["mixed"]["options"])

    # fp32 matmuls on the CPU round differently with the weights' memory alignment. A pruned
    # block mixes fresh tensors with views of the loaded file, at other offsets past a 64-byte
    # line, and the ring matches one offset per block (runtime.engine.packing): both models get
    # tensors of their own, aligned as fresh allocations are
    engine = _own_memory(FluxPipeline.from_pretrained(weights, local_files_only=True).transformer)
    by_hand = _own_memory(FluxPipeline.from_pretrained(weights, local_files_only=True).transformer)
    for name, sites in pruned.items():
        for path, units in sites:
            prune_units(by_hand.get_submodule(name), path, units)
    torch.manual_seed(5)
    inputs = get_family("flux").model_inputs(engine, WORKLOAD, "cpu", torch.float32)
    handle = apply_plan(engine, plan, "cpu")
    with torch.no_grad():
        assert torch.equal(engine(**inputs)[0], by_hand(**inputs)[0])
    handle.remove()
    ok("apply", out, "--weights", weights, "-o", tmp_path / "p.png", "--prompt", "a cat",
         "--steps", "2", "--device", "cpu", "--db", url)
