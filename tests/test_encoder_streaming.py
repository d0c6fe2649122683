"""Text encoders that do not fit beside the budget are streamed through the ring, not moved
to the CPU: `runtime.encoders` on real transformers encoders (T5, Qwen2-style), and `planner
apply` with a plan whose budget holds one encoder and not the other (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from planner.cli import app
from runtime.encoders import one_dtype, stream_encoder
from tests.pipeline_fixtures import save_tiny_pipeline, tiny_tokenizers

CPU = torch.device("cpu")


def _t5(dtype=torch.float32):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    _, _, _, vocab = tiny_tokenizers()
    model = T5EncoderModel(T5Config(d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=3,
                                    vocab_size=vocab, pad_token_id=0, eos_token_id=1))
    return model.to(dtype).eval()


def _qwen2():
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    return Qwen2Model(Qwen2Config(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2,
                                  vocab_size=64)).eval()


@pytest.mark.parametrize("build, blocks", [(_t5, 3), (_qwen2, 3)])
def test_streamed_encoder_is_bitwise_the_plain_one_and_removes_cleanly(build, blocks):
    model = build()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    ids = torch.tensor([[3, 5, 7, 2, 1, 0]])
    with torch.no_grad():
        plain = model(input_ids=ids).last_hidden_state
    handle = stream_encoder(model, CPU, budget_bytes=1 << 20)
    assert handle.stats.streamed_blocks == blocks and handle.stats.resident_blocks == 0
    with torch.no_grad():
        streamed = model(input_ids=ids).last_hidden_state
    assert torch.equal(plain, streamed)
    handle.remove()
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_bf16_t5_with_fp32_kept_projections_is_stored_in_one_dtype():
    model = _t5(torch.bfloat16)
    for block in model.encoder.block:  # as transformers loads it: `wo` kept in fp32
        block.layer[-1].DenseReluDense.wo.float()
    assert one_dtype(model)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "tiny-flux")


def _plan(tmp_path: Path, budget: int) -> Path:
    from runtime.inventory import inventory
    from runtime.plan import Predictions, Target, build_plan, save_plan
    from runtime.workload import Workload

    inv = inventory("tiny-flux")
    plan = build_plan(inv, {b.name for b in inv.blocks[::2]}, workload=Workload(64, 64, text_tokens=16),
                      target=Target("cpu", budget), prefetch_depth=2,
                      predictions=Predictions(step_ms=5.0, peak_vram_bytes=budget // 2, lower_bound_ms=4.0))
    path = tmp_path / f"plan-{budget}.json"
    save_plan(plan, path)
    return path


def _room_for_the_smaller_encoder(weights: Path) -> tuple[int, str]:
    """A budget holding the smaller encoder, not the larger beside it (the prompt is encoded
    before the plan is applied: the encoders have the plan's whole budget); and the larger's
    name (in this tiny pipeline CLIP, by its position table)."""
    from runtime.components import load_any_pipeline, module_bytes

    pipe = load_any_pipeline(weights)
    sizes = {name: module_bytes(getattr(pipe, name)) for name in ("text_encoder", "text_encoder_2")}
    small, large = sorted(sizes, key=sizes.get)
    return sizes[small] + sizes[large] // 2, large


def _apply(plan: Path, weights: Path, out: Path) -> dict:
    result = CliRunner().invoke(app, [
        "apply", str(plan), "--weights", str(weights), "--prompt", "a cat", "--steps", "2",
        "--height", "64", "--width", "64", "-o", str(out), "--device", "cpu", "--json",
    ])
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


def test_apply_streams_t5_when_it_does_not_fit_beside_the_budget(weights, tmp_path):
    from PIL import Image

    budget, large = _room_for_the_smaller_encoder(weights)
    roomy = _apply(_plan(tmp_path, 1 << 30), weights, tmp_path / "roomy.png")
    tight = _apply(_plan(tmp_path, budget), weights, tmp_path / "tight.png")
    assert roomy["encoders_streamed"] == [] and tight["encoders_streamed"] == [large]
    assert tight["encode_device"] == "cpu" and tight["encode_ms"] > 0
    with Image.open(tmp_path / "roomy.png") as a, Image.open(tmp_path / "tight.png") as b:
        assert a.tobytes() == b.tobytes()  # streaming moves weights, never changes a value


def test_apply_report_shows_the_encode_phase(weights, tmp_path):
    budget, large = _room_for_the_smaller_encoder(weights)
    plan = _plan(tmp_path, budget)
    result = CliRunner().invoke(app, [
        "apply", str(plan), "--weights", str(weights), "--prompt", "a cat", "--steps", "1",
        "--height", "64", "--width", "64", "-o", str(tmp_path / "x.png"), "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    assert "encode: " in result.output and f"{large} streamed through the ring" in result.output
