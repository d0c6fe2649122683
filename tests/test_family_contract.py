"""Every model family through the same tests, on its tiny catalog model (CPU).

The adapter's contract (runtime/families/base.py) and everything downstream that must not
name a family: inventory on meta, block and model inputs, FLOPs counted on meta against a real
forward, `apply_plan` bitwise equal to the plain model for streamed/resident mixes at depths
1-3, the cost model's device bytes against the engine's, `planner profile`/`tune`/`explain`,
`models inspect` and single-file loading in both namings (bf16 and fp8), and `planner apply`
with the family's real diffusers pipeline built from tiny configs.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from planner.cli import app
from runtime.catalog import get_model
from runtime.dtypes import DType
from runtime.families import family_of_module, get_family
from runtime.inventory import inventory, inventory_of_module
from runtime.plan import Target, build_plan
from runtime.random_weights import random_model, to_storage_
from tests.engine_probes import block_homes, moved
from tests.family_support import support, tiny_models

FAMILIES = [pytest.param(family, model, id=model) for family, model in tiny_models()]
runner = CliRunner()


def workload_of(family: str, model_id: str):
    width, height = support(family).APPLY_SIZE
    return get_model(model_id).workload(f"{width}x{height}", frames=support(family).APPLY_FRAMES)


def forward(model, adapter, workload, dtype=torch.float32):
    inputs = adapter.model_inputs(model, workload, "cpu", dtype)
    with torch.no_grad():
        out = model(**inputs)
    out = out[0] if isinstance(out, tuple) else out.sample
    # some transformers (Z-Image) return one tensor per batch entry, as their pipelines stack
    return torch.stack(out) if isinstance(out, list) else out


def placements(n: int) -> dict[str, list[int]]:
    return {
        "streamed": list(range(n)),
        "spread": list(range(0, n, 2)),
        "prefix": list(range(n // 2)),
        "suffix": list(range(n - n // 2, n)),
    }


@pytest.mark.parametrize("family, model_id", FAMILIES)
def test_tiny_model_is_its_familys(family, model_id):
    spec = get_model(model_id)
    assert spec.family == family and model_id.startswith("tiny-")
    model = random_model(model_id)
    assert family_of_module(model) is get_family(family)
    assert len(get_family(family).blocks(model)) >= 4


@pytest.mark.parametrize("storage", [DType.BF16, DType.FP8])
@pytest.mark.parametrize("family, model_id", FAMILIES)
def test_inventory_on_meta_equals_the_built_model(family, model_id, storage):
    model = random_model(model_id, storage)
    assert inventory_of_module(model, get_family(family), model_id, storage) == inventory(model_id, storage)


@pytest.mark.parametrize("family, model_id", FAMILIES)
def test_block_inputs_drive_every_block(family, model_id):
    adapter = get_family(family)
    model = random_model(model_id)
    workload = workload_of(family, model_id)
    for name, kind, block in adapter.blocks(model):
        inputs = adapter.block_inputs(model, kind, workload, "cpu", torch.float32)
        with torch.no_grad():
            out = block(*inputs.args, **inputs.kwargs)
        outs = [t for t in torch.utils._pytree.tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        assert outs and all(torch.isfinite(t).all() for t in outs), name


@pytest.mark.parametrize("family, model_id", FAMILIES)
def test_meta_trace_counts_the_real_forward(family, model_id):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from profiler.flops import model_trace

    adapter = get_family(family)
    workload = workload_of(family, model_id)
    trace = model_trace(model_id, workload, DType.FP32)
    model = random_model(model_id)
    inputs = adapter.model_inputs(model, workload, "cpu", torch.float32)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(**inputs)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    names = [name for name, _, _ in adapter.blocks(model)]
    assert [b.name for b in trace.blocks] == names
    assert [b.flops for b in trace.blocks] == [sum(counts[f"{root}.{n}"].values()) for n in names]
    assert trace.total == counter.get_total_flops()
    assert all(b.flops > 0 and b.activation_bytes > 0 for b in trace.blocks)


@pytest.mark.parametrize("family, model_id", FAMILIES)
def test_apply_plan_is_bitwise_equal_to_the_plain_model(family, model_id):
    from runtime.apply import apply_plan

    adapter = get_family(family)
    workload = workload_of(family, model_id)
    plain = random_model(model_id)
    expected = forward(plain, adapter, workload)
    inv = inventory(model_id)
    model = random_model(model_id)
    for placement, streamed_idx in placements(len(inv.blocks)).items():
        for depth in (1, 2, 3):
            streamed = {inv.blocks[i].name for i in streamed_idx}
            plan = build_plan(inv, streamed, workload=workload, target=Target("cpu", 1 << 30),
                              prefetch_depth=depth)
            handle = apply_plan(model, plan, "cpu")
            try:
                homes = block_homes(model, adapter)
                for _ in range(2):  # the second forward runs on the wrapped-around ring
                    assert torch.equal(forward(model, adapter, workload), expected), (placement, depth)
                    assert moved(homes) == [], (placement, depth)
                assert handle.resyncs == 0
            finally:
                handle.remove()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))


def _apply_and_compare(model, reference, family, model_id, storage, cast):
    """`model` under a spread plan (even blocks streamed, depth 2) in `storage` with `cast`:
    two forwards bitwise equal to `reference` (the same weights in the compute dtype), and
    after each every block tensor in its own storage with its own values."""
    from runtime.apply import apply_plan
    from runtime.plan import HostMemory

    adapter = get_family(family)
    workload = workload_of(family, model_id)
    expected = forward(reference, adapter, workload, torch.bfloat16)
    inv = inventory_of_module(model, adapter, model_id, storage)
    streamed = {b.name for b in inv.blocks[::2]}
    plan = build_plan(inv, streamed, workload=workload, target=Target("cpu", 1 << 30), prefetch_depth=2,
                      host_memory=HostMemory.PAGEABLE, cast=cast)
    handle = apply_plan(model, plan, "cpu")
    try:
        homes = block_homes(model, adapter)
        for _ in range(2):
            assert torch.equal(forward(model, adapter, workload, torch.bfloat16), expected)
            assert moved(homes) == []
        assert handle.resyncs == 0
    finally:
        handle.remove()


@pytest.mark.parametrize("cast", ["auto", "pre"])
@pytest.mark.parametrize("family, model_id", FAMILIES)
def test_fp8_apply_plan_is_bitwise_equal_and_leaves_every_block_home(family, model_id, cast):
    from runtime.plan import CastMode

    model = random_model(model_id, DType.FP8)
    reference = copy.deepcopy(model)
    for param in reference.parameters():
        param.data = param.data.to(torch.bfloat16)
    _apply_and_compare(model, reference, family, model_id, DType.FP8, CastMode(cast))


@pytest.mark.parametrize("cast", ["auto", "pre"])
@pytest.mark.parametrize("family, model_id", FAMILIES)
def test_gguf_q8_0_apply_plan_is_bitwise_equal_and_leaves_every_block_home(family, model_id, cast, tmp_path):
    from runtime.checkpoint.load import load_transformer
    from runtime.checkpoint.load_quantized import dequantize_model
    from runtime.plan import CastMode
    from tests.quant_files import save_gguf

    state = {k: v.contiguous() for k, v in random_model(model_id).state_dict().items()}
    path = save_gguf(state, tmp_path / f"{model_id}-Q8_0.gguf", "Q8_0", bfl=False)
    config = dict(get_model(model_id).config)
    reference = load_transformer(path, config, family)
    dequantize_model(reference, torch.bfloat16)
    reference = reference.to(torch.bfloat16)
    model = load_transformer(path, config, family)
    _apply_and_compare(model, reference, family, model_id, DType.Q8_0, CastMode(cast))


@pytest.mark.parametrize("family, model_id", FAMILIES)
def test_cost_model_device_bytes_equal_the_engine(family, model_id):
    from planner.costmodel import CostModel, Layout
    from profiler.reference import reference_profile
    from runtime.apply import apply_plan
    from runtime.plan import CastMode, HostMemory

    inv = inventory(model_id)
    workload = workload_of(family, model_id)
    profile = reference_profile("rtx-4060", model_id, workload)
    model = random_model(model_id)
    for streamed_idx in placements(len(inv.blocks)).values():
        streamed = {inv.blocks[i].name for i in streamed_idx}
        layout = Layout.uniform([b.name in streamed for b in inv.blocks], CastMode.PRE, 2,
                                HostMemory.PAGEABLE)
        predicted = CostModel(inv, profile).device_weight_bytes(layout)
        plan = build_plan(inv, streamed, workload=workload, target=Target("cpu", 1 << 30),
                          prefetch_depth=2, host_memory=HostMemory.PAGEABLE)
        handle = apply_plan(model, plan, "cpu")
        try:
            assert handle.stats.device_weight_bytes == predicted
        finally:
            handle.remove()


@pytest.mark.parametrize("family, model_id", FAMILIES)
def test_profile_tune_explain_through_the_cli(family, model_id, tmp_path):
    db = f"sqlite:///{tmp_path / 'store.db'}"
    width, height = support(family).APPLY_SIZE
    frames = ["--frames", str(support(family).APPLY_FRAMES)] if support(family).APPLY_FRAMES > 1 else []
    size = ["--resolution", f"{width}x{height}", *frames]
    profiled = runner.invoke(app, ["profile", "--model", model_id, *size, "--device", "cpu",
                                   "--db", db, "--json"])
    assert profiled.exit_code == 0, profiled.output
    data = json.loads(profiled.output)
    assert data["model_id"] == model_id and data["summary"]["compute_ms_per_step"] > 0
    plan_file = tmp_path / "plan.json"
    tuned = runner.invoke(app, ["tune", "--model", model_id, "--vram", "1GB", "--gpu", "rtx-4060",
                                *size, "--db", db, "-o", str(plan_file)])
    assert tuned.exit_code == 0, tuned.output
    assert "stream-all" in tuned.output
    explained = runner.invoke(app, ["explain", str(plan_file)])
    assert explained.exit_code == 0, explained.output


def _transformer_state(family, model_id):
    pipe = support(family).build_tiny_pipeline(model_id)
    model = getattr(pipe, get_family(family).denoiser)
    return model, {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("storage", [DType.FP32, DType.FP8])
@pytest.mark.parametrize("family, model_id", FAMILIES)
def test_inspect_and_load_both_namings(family, model_id, storage, tmp_path):
    from safetensors.torch import save_file

    from runtime.checkpoint.inspect import Naming, inspect_checkpoint
    from runtime.checkpoint.load import load_transformer

    transformer, _ = _transformer_state(family, model_id)
    to_storage_(transformer, storage)
    state = {k: v.contiguous() for k, v in transformer.state_dict().items()}
    inv = inventory(model_id, storage)
    files = {Naming.DIFFUSERS: state}
    original = support(family).to_original(dict(state))
    if original is not None:
        files[Naming.ORIGINAL] = original
    config = {k: v for k, v in transformer.config.items() if not k.startswith("_")}
    for naming, tensors in files.items():
        path = tmp_path / f"{naming.value}.safetensors"
        save_file(tensors, str(path))
        report = inspect_checkpoint(path)
        assert (report.family, report.naming) == (family, naming)
        assert [(b.name, b.bytes) for b in report.blocks] == [(b.name, b.bytes) for b in inv.blocks]
        loaded = load_transformer(path, config, family=family)
        got = loaded.state_dict()
        assert sorted(got) == sorted(state), naming
        for name, tensor in state.items():
            assert got[name].dtype == tensor.dtype, name
            assert torch.equal(got[name].view(torch.uint8), tensor.view(torch.uint8)), name


@pytest.mark.parametrize("family, model_id", FAMILIES)
def test_planner_apply_with_the_familys_pipeline(family, model_id, tmp_path):
    from PIL import Image

    from db.store import open_store
    from runtime.plan import save_plan

    pipe = support(family).build_tiny_pipeline(model_id)
    weights = tmp_path / "pipe"
    pipe.save_pretrained(weights, safe_serialization=True)
    inv = inventory(model_id)
    workload = workload_of(family, model_id)
    plan = build_plan(inv, {b.name for b in inv.blocks[::2]}, workload=workload,
                      target=Target("cpu", 1 << 30), prefetch_depth=2)
    plan_file = tmp_path / "plan.json"
    save_plan(plan, plan_file)
    frames = support(family).APPLY_FRAMES
    out = tmp_path / ("out.png" if frames == 1 else "out.webp")
    db = f"sqlite:///{tmp_path / 'store.db'}"
    result = runner.invoke(app, [
        "apply", str(plan_file), "--weights", str(weights), "--prompt", "a cat on the mat",
        "--steps", "2", "-o", str(out), "--device", "cpu", "--db", db,
    ])
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.size == support(family).APPLY_SIZE
        assert getattr(image, "n_frames", 1) == frames
    with open_store(db) as store:
        assert store.find_plan(plan) is not None
