"""LoRA through diffusers' own loader with a plan applied (tiny FLUX, CPU): loaded before or
after `apply_plan`, fused and unfused, switched with `set_adapters`, the output is bitwise the
plain model's with the same LoRA, and `remove()` gives the model back as it was."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft")

from runtime.apply import apply_plan  # noqa: E402
from runtime.families import get_family  # noqa: E402
from runtime.inventory import inventory  # noqa: E402
from runtime.plan import Target, build_plan  # noqa: E402
from runtime.workload import Workload  # noqa: E402
from tests.pipeline_fixtures import build_tiny_pipeline  # noqa: E402

W = Workload(64, 64, text_tokens=16)
TARGETS = ["to_q", "to_k", "to_v", "proj_mlp", "proj_out"]


def _write_lora(folder, seed: int, targets=TARGETS):
    """A LoRA for tiny-flux with random (non-zero) weights, saved as diffusers writes one."""
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = build_tiny_pipeline()
    torch.manual_seed(seed)
    pipe.transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    )
    FluxPipeline.save_lora_weights(
        folder, transformer_lora_layers=get_peft_model_state_dict(pipe.transformer)
    )
    return folder


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    return [_write_lora(tmp_path_factory.mktemp(f"lora{i}"), seed=i) for i in range(2)]


def _forward(transformer):
    inputs = get_family("flux").model_inputs(transformer, W, "cpu", torch.float32)
    with torch.no_grad():
        return transformer(**inputs)[0]


def _plan(streamed_every=2, depth=2):
    inv = inventory("tiny-flux")
    streamed = {b.name for b in inv.blocks[::streamed_every]}
    return build_plan(inv, streamed, workload=W, target=Target("cpu", 1 << 30), prefetch_depth=depth)


def _state(transformer):
    return {k: v.clone() for k, v in transformer.state_dict().items()}


@pytest.mark.parametrize("streamed_every, depth", [(1, 1), (2, 2), (3, 3)])
def test_lora_loaded_before_the_plan(loras, streamed_every, depth):
    plain = build_tiny_pipeline()
    plain.load_lora_weights(loras[0], adapter_name="a")
    expected = _forward(plain.transformer)
    pipe = build_tiny_pipeline()
    pipe.load_lora_weights(loras[0], adapter_name="a")
    before = _state(pipe.transformer)
    handle = apply_plan(pipe, _plan(streamed_every, depth), "cpu")
    lora_bytes = sum(v.numel() * v.element_size() for k, v in before.items() if "lora_" in k)
    assert handle.stats.adapter_bytes == lora_bytes > 0
    for _ in range(2):
        assert torch.equal(_forward(pipe.transformer), expected)
    handle.remove()
    after = pipe.transformer.state_dict()
    assert sorted(after) == sorted(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_lora_loaded_after_the_plan_is_placed_with_its_blocks(loras):
    plain = build_tiny_pipeline()
    expected_base = _forward(plain.transformer)
    plain.load_lora_weights(loras[0], adapter_name="a")
    expected = _forward(plain.transformer)
    pipe = build_tiny_pipeline()
    handle = apply_plan(pipe, _plan(), "cpu")
    assert torch.equal(_forward(pipe.transformer), expected_base)
    pipe.load_lora_weights(loras[0], adapter_name="a")
    assert torch.equal(_forward(pipe.transformer), expected)
    assert handle.reapplied == 1 and handle.stats.adapter_bytes > 0
    assert torch.equal(_forward(pipe.transformer), expected) and handle.reapplied == 1
    pipe.unload_lora_weights()
    assert torch.equal(_forward(pipe.transformer), expected_base)
    assert handle.reapplied == 2 and handle.stats.adapter_bytes == 0
    handle.remove()


def test_fuse_and_unfuse_under_the_plan(loras):
    plain = build_tiny_pipeline()
    plain.load_lora_weights(loras[0], adapter_name="a")
    unfused = _forward(plain.transformer)
    plain.fuse_lora(lora_scale=0.7)
    fused = _forward(plain.transformer)
    assert not torch.equal(fused, unfused)
    pipe = build_tiny_pipeline()
    pipe.load_lora_weights(loras[0], adapter_name="a")
    handle = apply_plan(pipe, _plan(), "cpu")
    pipe.fuse_lora(lora_scale=0.7)
    assert torch.equal(_forward(pipe.transformer), fused)
    pipe.unfuse_lora()
    plain.unfuse_lora()
    assert torch.equal(_forward(pipe.transformer), _forward(plain.transformer))
    handle.remove()


def test_fused_before_the_plan(loras):
    plain = build_tiny_pipeline()
    plain.load_lora_weights(loras[0], adapter_name="a")
    plain.fuse_lora()
    expected = _forward(plain.transformer)
    pipe = build_tiny_pipeline()
    pipe.load_lora_weights(loras[0], adapter_name="a")
    pipe.fuse_lora()
    handle = apply_plan(pipe, _plan(), "cpu")
    assert torch.equal(_forward(pipe.transformer), expected)
    handle.remove()


def test_set_adapters_switches_without_applying_again(loras):
    plain = build_tiny_pipeline()
    pipe = build_tiny_pipeline()
    for p in (plain, pipe):
        p.load_lora_weights(loras[0], adapter_name="a")
        p.load_lora_weights(loras[1], adapter_name="b")
    handle = apply_plan(pipe, _plan(), "cpu")
    for names, weights in [(["a"], [1.0]), (["b"], [0.5]), (["a", "b"], [0.3, 0.9])]:
        plain.set_adapters(names, weights)
        pipe.set_adapters(names, weights)
        assert torch.equal(_forward(pipe.transformer), _forward(plain.transformer)), names
    assert handle.reapplied == 0
    handle.remove()


def test_planner_apply_with_loras(loras, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from planner.cli import app
    from runtime.plan import save_plan
    from tests.pipeline_fixtures import save_tiny_pipeline

    weights = save_tiny_pipeline(tmp_path / "pipe")
    plan_file = tmp_path / "plan.json"
    save_plan(_plan(), plan_file)
    files = [next(folder.glob("*.safetensors")) for folder in loras]
    out = tmp_path / "out.png"
    base = ["apply", str(plan_file), "--weights", str(weights), "--prompt", "a cat", "--steps", "2",
            "--device", "cpu", "--db", f"sqlite:///{tmp_path / 's.db'}"]
    result = CliRunner().invoke(app, [*base, "-o", str(out), "--lora", str(files[0]),
                                      "--lora", f"{files[1]}:0.5", "--json"])
    assert result.exit_code == 0, result.output
    import json

    assert json.loads(result.stdout)["adapter_bytes"] > 0
    with Image.open(out) as image:
        assert image.size == (64, 64)


@pytest.mark.parametrize("spec, words", [
    ("{f}:lots", "must be a scale such as 0.8"),
    ("{f}:nan", "must be a finite number"),
    ("{d}/missing.safetensors", "is not a file"),
])
def test_bad_lora_option_is_one_sentence_before_any_work(loras, tmp_path, spec, words):
    from typer.testing import CliRunner

    from planner.cli import app
    from runtime.plan import save_plan

    plan_file = tmp_path / "plan.json"
    save_plan(_plan(), plan_file)
    f = next(loras[0].glob("*.safetensors"))
    out = tmp_path / "out.png"
    result = CliRunner().invoke(app, [
        "apply", str(plan_file), "--weights", str(tmp_path / "no-such-folder"), "--prompt", "x",
        "--lora", spec.format(f=f, d=tmp_path), "-o", str(out), "--db", f"sqlite:///{tmp_path / 's.db'}",
    ])
    assert result.exit_code == 2, result.output
    assert words in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "s.db").exists()


def test_a_lora_that_widens_base_layers_is_refused_with_the_reason(tmp_path):
    # diffusers widens a Linear whose LoRA takes more input features (FLUX control LoRAs):
    # the base model then differs from what the plan describes.
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from planner.cli import app
    from runtime.plan import save_plan
    from tests.pipeline_fixtures import save_tiny_pipeline

    weights = save_tiny_pipeline(tmp_path / "pipe")
    bad = tmp_path / "other.safetensors"
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 999),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 4)}, str(bad))
    plan_file = tmp_path / "plan.json"
    save_plan(_plan(), plan_file)
    result = CliRunner().invoke(app, [
        "apply", str(plan_file), "--weights", str(weights), "--prompt", "x", "--steps", "1",
        "--lora", str(bad), "-o", str(tmp_path / "o.png"), "--device", "cpu",
        "--db", f"sqlite:///{tmp_path / 's.db'}",
    ])
    assert result.exit_code == 2, result.output
    assert "changed the transformer's base weights" in result.output
    assert "Traceback" not in result.output


@pytest.mark.gpu
@pytest.mark.parametrize("when", ["before", "after", "fused-after"])
def test_lora_under_a_plan_on_cuda(loras, when, cuda_device):
    def forward(transformer):
        inputs = get_family("flux").model_inputs(transformer, W, cuda_device, torch.float32)
        with torch.no_grad():
            return transformer(**inputs)[0].cpu()

    plain = build_tiny_pipeline()
    plain.load_lora_weights(loras[0], adapter_name="a")
    if when == "fused-after":
        plain.fuse_lora()
    plain.transformer.to(cuda_device)
    expected = forward(plain.transformer)
    pipe = build_tiny_pipeline()
    if when == "before":
        pipe.load_lora_weights(loras[0], adapter_name="a")
    handle = apply_plan(pipe, _plan(), cuda_device)
    if when != "before":
        pipe.load_lora_weights(loras[0], adapter_name="a")
    if when == "fused-after":
        forward(pipe.transformer)  # places the new adapters with their blocks first
        pipe.fuse_lora()
    for _ in range(2):
        assert torch.equal(forward(pipe.transformer), expected)
    handle.remove()
