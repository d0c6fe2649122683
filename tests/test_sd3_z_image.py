"""What is particular to SD3.5 and Z-Image beyond the shared family contract: their block
structure as released, block inputs equal to what their own forwards pass each block, and
sizes their position tables do not cover refused in one sentence."""

from __future__ import annotations

import inspect

import pytest
import torch
from typer.testing import CliRunner

from planner.cli import app
from runtime.catalog import get_model
from runtime.families import get_family
from runtime.inventory import inventory
from runtime.random_weights import random_model


def test_sd35_medium_is_mmdit_x_and_large_is_not():
    medium, large = inventory("sd3.5-medium"), inventory("sd3.5-large")
    assert [b.name for b in medium.blocks] == [f"transformer_blocks.{i}" for i in range(24)]
    dual, plain, last = medium.blocks[0].params, medium.blocks[13].params, medium.blocks[23].params
    assert {b.params for b in medium.blocks[:13]} == {dual} and {b.params for b in medium.blocks[13:23]} == {plain}
    # attn2 (q, k, v, out with biases; two rms norms of head dim 64) and a norm1 that
    # modulates it too (SD35AdaLayerNormZeroX: 9 x dim outputs instead of 6)
    assert dual - plain == 4 * (1536 * 1536 + 1536) + 2 * 64 + 3 * (1536 * 1536 + 1536)
    assert last < plain  # context-pre-only: no context feed-forward or context output
    assert {b.params for b in large.blocks[:37]} == {212_999_680}
    assert large.blocks[37].params == 136_085_248
    assert large.total_params == 8_146_280_768 and medium.total_params == 2_469_663_936


def test_z_image_runs_its_refiners_first():
    inv = inventory("z-image-turbo")
    assert [b.kind for b in inv.blocks] == ["noise-refiner"] * 2 + ["context-refiner"] * 2 + ["main"] * 30
    assert inv.blocks[2].name == "context_refiner.0" and inv.blocks[4].name == "layers.0"
    # the context refiner is unmodulated: no adaLN_modulation Linear(256, 4 * 3840)
    assert inv.blocks[0].params - inv.blocks[2].params == 256 * 4 * 3840 + 4 * 3840
    assert inv.total_params == 6_154_908_736


def _passed_to_blocks(model, adapter, workload) -> dict:
    """Per kind, the arguments (by parameter name, None left out) the model's own forward
    passes that kind's first block."""
    seen, hooks = {}, []
    for _, kind, block in adapter.blocks(model):
        if kind in seen:
            continue
        seen[kind] = None

        def grab(module, args, kwargs, kind=kind):
            seen[kind] = _by_name(module, args, kwargs)

        hooks.append(block.register_forward_pre_hook(grab, with_kwargs=True))
    try:
        with torch.no_grad():
            model(**adapter.model_inputs(model, workload, "cpu", torch.float32))
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _by_name(block, args, kwargs) -> dict:
    names = list(inspect.signature(block.forward).parameters)
    given = dict(zip(names, args)) | dict(kwargs)
    return {name: value for name, value in given.items() if value is not None}


@pytest.mark.parametrize("model_id", ["tiny-sd3", "tiny-z-image"])
def test_block_inputs_are_what_the_forward_passes(model_id):
    spec = get_model(model_id)
    adapter = get_family(spec.family)
    model = random_model(model_id)
    workload = spec.workload("64x48")
    first = {}
    for _, kind, block in adapter.blocks(model):
        first.setdefault(kind, block)
    for kind, real in _passed_to_blocks(model, adapter, workload).items():
        made = adapter.block_inputs(model, kind, workload, "cpu", torch.float32)
        ours = _by_name(first[kind], made.args, made.kwargs)
        assert sorted(ours) == sorted(real), kind
        for name, value in real.items():
            assert (ours[name].shape, ours[name].dtype) == (value.shape, value.dtype), (kind, name)
            if value.is_complex():  # Z-Image's rotary tables: equal, not only alike
                assert torch.equal(ours[name], value), (kind, name)


@pytest.mark.parametrize(
    "model_id, resolution, words",
    [
        ("sd3.5-large", "4096x1024", ["4096x1024", "at most 3072 pixels"]),
        ("tiny-z-image", "1024x1024", ["1024x1024", "at most 512 pixels"]),
    ],
)
def test_sizes_beyond_the_position_tables_exit_2_with_one_line(model_id, resolution, words, tmp_path):
    result = CliRunner().invoke(app, [
        "tune", "--model", model_id, "--vram", "8GB", "--gpu", "rtx-4060",
        "--resolution", resolution, "--db", f"sqlite:///{tmp_path / 'store.db'}",
    ])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert all(word in result.stderr for word in words) and "Traceback" not in result.output


@pytest.mark.parametrize("family, model_id, guidance", [
    ("sd3", "tiny-sd3", 4.5), ("z-image", "tiny-z-image", 3.0),
])
def test_guidance_that_turns_cfg_on_is_refused_for_a_plan_without_cfg(family, model_id, guidance):
    import dataclasses

    from runtime.errors import UserError
    from runtime.workload import CfgMode
    from tests.family_support import support

    pipe = support(family).build_tiny_pipeline(model_id)
    adapter = get_family(family)
    workload = dataclasses.replace(get_model(model_id).workload("64x64"), cfg=CfgMode.NONE)
    with pytest.raises(UserError, match="not tuned for"):
        adapter.prompt_kwargs(pipe, "a cat", workload, guidance, torch.device("cpu"))
    batched = dataclasses.replace(workload, cfg=CfgMode.BATCHED)
    kwargs = adapter.prompt_kwargs(pipe, "a cat", batched, guidance, torch.device("cpu"))
    assert kwargs["guidance_scale"] == guidance and "negative_prompt_embeds" in kwargs
