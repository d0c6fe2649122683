"""ComfyUI's own FLUX (`comfy.ldm.flux.model.Flux`) under a plan, in ComfyUI's own loader and
sampler: a tiny real model built by `comfy.supported_models.Flux`, loaded through
`comfy.model_management.load_models_gpu`, sampled through `comfy.sample.sample`.

ComfyUI comes from the pinned sdist (tests/comfy_fixtures.py); without it these tests skip with
the reason, and `.ci/run` runs them in a venv that has it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from comfy_fixtures import comfyui, sample, tiny_flux_patcher
from runtime.dtypes import DType
from runtime.errors import PlanMismatchError
from runtime.inventory import inventory, inventory_of_module
from runtime.plan import Target, build_plan
from runtime.workload import Workload

STREAMED = {"transformer_blocks.1", "single_transformer_blocks.0", "single_transformer_blocks.3"}


@pytest.fixture(scope="module")
def comfy():
    return comfyui()


@pytest.fixture(autouse=True)
def _nothing_loaded(comfy):
    """Every test starts and ends with ComfyUI holding no loaded model."""
    comfy.model_management.unload_all_models()
    yield
    comfy.model_management.unload_all_models()


def tiny_plan(streamed=STREAMED, depth: int = 2):
    """A plan for the catalog's diffusers tiny-flux: block names as diffusers has them."""
    inv = inventory("tiny-flux", DType.FP32)
    workload = Workload(height=32, width=32, text_tokens=16)
    return build_plan(
        inv, set(streamed), workload=workload, target=Target("cpu", 1 << 30),
        prefetch_depth=depth,
    )


def _state(module):
    return {name: (p, p.detach().clone()) for name, p in module.named_parameters()}


def _assert_restored(module, before, same_objects: bool = True):
    """Values, device and (unless ComfyUI's own LoRA unpatching swapped them) the very
    Parameter objects are back, with no handle and no hook left on any module."""
    from runtime.engine.handle import applied_handle

    after = dict(module.named_parameters())
    assert after.keys() == before.keys()
    for name, (param, values) in before.items():
        if same_objects:
            assert after[name] is param, f"{name} is another tensor object"
        now = after[name]
        assert now.device.type == "cpu" and torch.equal(now.detach(), values), name
    assert applied_handle(module) is None
    for sub in module.modules():
        assert not sub._forward_hooks and not sub._forward_pre_hooks, type(sub).__name__


def _ring_bound_probe(module, block_name):
    """Forward pre-hook on the first layer inside a block (it runs once the block's own hooks
    have run) that records whether its weight lives in a ring slot of the handle applied to
    `module` at that moment."""
    from runtime.engine.handle import applied_handle

    seen = []
    block = module.get_submodule(block_name)
    layer = next(m for m in block.modules() if list(m.parameters(recurse=False)))

    def probe(mod, args):
        handle = applied_handle(module)
        if handle is None:
            seen.append(False)
            return
        ptr = next(mod.parameters(recurse=False)).data_ptr()  # ComfyUI may swap the object
        seen.append(any(
            buf.data_ptr() <= ptr < buf.data_ptr() + buf.numel() * buf.element_size()
            for buf in handle.ring_buffers()
        ))

    return seen, layer.register_forward_pre_hook(probe)


def test_plan_for_diffusers_flux_is_adopted_block_for_block(comfy):
    from comfyui_nodes.patcher import diffusion_model
    from runtime.families import family_of_module, get_family

    module = diffusion_model(tiny_flux_patcher())
    adapter = family_of_module(module)
    assert adapter.name == "comfy-flux"
    ours = inventory_of_module(module, adapter, "tiny-flux", DType.FP32)
    theirs = inventory("tiny-flux", DType.FP32)
    assert [b.bytes for b in ours.blocks] == [b.bytes for b in theirs.blocks]
    assert [b.kind for b in ours.blocks] == [b.kind for b in theirs.blocks]
    plan = adapter.adopt_plan(tiny_plan())
    assert plan.model.family == "comfy-flux"
    assert {b.name for b in plan.streamed} == {"double_blocks.1", "single_blocks.0", "single_blocks.3"}
    assert get_family("flux").recognises(module) is False


def test_plan_of_another_size_is_refused_before_anything_is_touched(comfy):
    from comfyui_nodes.patcher import attach_plan, diffusion_model

    patcher = tiny_flux_patcher()
    before = _state(diffusion_model(patcher))
    inv = inventory("flux-dev", DType.BF16)
    big = build_plan(
        inv, {"transformer_blocks.0"}, workload=Workload(height=1024, width=1024),
        target=Target("rtx-4060", 8 << 30),
    )
    with pytest.raises(PlanMismatchError, match="blocks"):
        attach_plan(patcher, big)
    assert patcher.get_attachment("offload_planner") is None
    _assert_restored(diffusion_model(patcher), before)


def test_sampling_under_the_plan_is_identical_and_undone_afterwards(comfy):
    from comfyui_nodes.patcher import attach_plan, diffusion_model

    patcher = tiny_flux_patcher()
    module = diffusion_model(patcher)
    before = _state(module)
    plain = sample(patcher)
    comfy.model_management.unload_all_models()

    planned, attachment = attach_plan(patcher, tiny_plan())
    seen, probe = _ring_bound_probe(module, "single_blocks.3")
    try:
        out = sample(planned)
    finally:
        probe.remove()
    assert torch.equal(out, plain)
    assert seen and all(seen), "the streamed block did not run from a ring slot"
    # the plan stays applied with the loaded model, for the next prompt
    assert attachment.applied == 1 and attachment.removed == 0 and attachment.handle.active
    assert attachment.last_stats.streamed_blocks == 3 and attachment.last_stats.slots == 2
    assert planned in comfy.model_management.loaded_models()
    # ComfyUI unloading the model undoes the plan: every tensor back, the packs freed
    comfy.model_management.unload_all_models()
    assert attachment.handle is None and attachment.removed == 1
    _assert_restored(module, before)


def test_a_failing_sampling_run_still_undoes_the_plan(comfy):
    from comfyui_nodes.patcher import attach_plan, diffusion_model

    patcher = tiny_flux_patcher()
    module = diffusion_model(patcher)
    before = _state(module)
    planned, attachment = attach_plan(patcher, tiny_plan())

    def interrupt(step, x0, x, total_steps):
        raise KeyboardInterrupt  # what ComfyUI's "cancel" raises inside the sampler

    latent = torch.zeros(1, 4, 4, 4)
    positive = [[torch.randn(1, 16, 32), {"pooled_output": torch.randn(1, 32), "guidance": 3.5}]]
    with pytest.raises(KeyboardInterrupt):
        comfy.sample.sample(
            planned, torch.randn_like(latent), 2, 1.0, "euler", "simple", positive, positive,
            latent, callback=interrupt,
        )
    assert attachment.applied == 1 and attachment.handle is None
    _assert_restored(module, before)


def test_sampling_again_reuses_the_loaded_model(comfy):
    from comfyui_nodes.patcher import attach_plan

    patcher = tiny_flux_patcher()
    planned, attachment = attach_plan(patcher, tiny_plan())
    first = sample(planned)
    handle = attachment.handle
    second = sample(planned)
    assert torch.equal(first, second)
    assert attachment.applied == 1 and attachment.reused == 1 and attachment.removed == 0
    assert attachment.handle is handle


def test_a_second_prompt_with_a_new_seed_reuses_the_packs(comfy):
    """As ComfyUI runs a second prompt: the same planned clone, the model kept loaded, another
    seed. The plan found applied and unchanged is kept: nothing is packed again."""
    from comfyui_nodes.patcher import attach_plan

    patcher = tiny_flux_patcher()
    plain = sample(patcher, seed=8)
    comfy.model_management.unload_all_models()
    planned, attachment = attach_plan(patcher, tiny_plan())
    sample(planned, seed=7)
    first = attachment.last_report
    assert not first.reused and first.pack_s > 0 and first.streamed_blocks == 3
    assert first.line().startswith("offload-planner: 3 of 8 blocks streamed")
    assert torch.equal(sample(planned, seed=8), plain)
    second = attachment.last_report
    assert second.reused and second.pack_s == 0.0 and "packs re-used" in second.line()
    assert attachment.applied == 1 and attachment.reused == 1


def test_a_changed_lora_applies_the_plan_again_and_its_packs_hold_the_patched_weights(comfy):
    from comfyui_nodes.patcher import attach_plan, diffusion_model

    patcher = tiny_flux_patcher()
    module = diffusion_model(patcher)
    lora = _lora(module, ["single_blocks.3"])
    with_lora, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 0.8, 0.0)
    plain, reference = sample(patcher), sample(with_lora)
    comfy.model_management.unload_all_models()

    planned, attachment = attach_plan(patcher, tiny_plan())
    assert torch.equal(sample(planned), plain)
    lora_planned, _ = comfy.sd.load_lora_for_models(planned, None, lora, 0.8, 0.0)
    assert torch.equal(sample(lora_planned), reference)  # other patches: packed again
    assert attachment.applied == 2 and not attachment.last_report.reused
    assert torch.equal(sample(lora_planned), reference)  # unchanged: kept
    assert attachment.applied == 2 and attachment.last_report.reused
    assert torch.equal(sample(planned), plain)  # the LoRA gone: packed again
    assert attachment.applied == 3


def test_the_plan_is_undone_when_its_patcher_is_garbage_collected(comfy):
    import gc

    from comfyui_nodes.patcher import attach_plan, diffusion_model

    patcher = tiny_flux_patcher()
    module = diffusion_model(patcher)
    before = _state(module)
    planned, attachment = attach_plan(patcher, tiny_plan())
    sample(planned)
    assert attachment.handle is not None
    attachment_ref = attachment
    del planned, attachment  # ComfyUI holds its loaded patchers weakly
    gc.collect()
    assert attachment_ref.handle is None
    _assert_restored(module, before)


def test_clones_share_the_module_but_not_the_plan(comfy):
    from comfyui_nodes.patcher import attach_plan, diffusion_model, attachment_of

    patcher = tiny_flux_patcher()
    module = diffusion_model(patcher)
    before = _state(module)
    plain = sample(patcher)
    planned, attachment = attach_plan(patcher, tiny_plan())
    assert attachment_of(patcher) is None and attachment_of(planned) is attachment
    assert torch.equal(sample(planned), plain)

    # The unplanned patcher (and a clone of it) sampled next: nothing of the plan is seen
    # during their runs, and the planned clone's LoRA-free clone carries the plan on.
    sibling = patcher.clone()
    seen, probe = _ring_bound_probe(module, "single_blocks.3")
    try:
        assert torch.equal(sample(sibling), plain)
        assert torch.equal(sample(patcher), plain)
    finally:
        probe.remove()
    assert seen and not any(seen)
    # the sibling's load detached the planned clone, which undid its plan
    assert attachment.applied == 1 and attachment.handle is None
    assert attachment_of(sibling) is None
    assert attachment_of(planned.clone()) is attachment
    comfy.model_management.unload_all_models()
    _assert_restored(module, before)


def test_a_second_apply_replaces_the_plan_it_is_given(comfy):
    from comfyui_nodes.patcher import attach_plan, attachment_of

    patcher = tiny_flux_patcher()
    first, _ = attach_plan(patcher, tiny_plan())
    second, attachment = attach_plan(first, tiny_plan({"transformer_blocks.0"}, depth=1))
    assert attachment_of(second) is attachment
    assert len(second.get_wrappers("sampler_sample", "offload_planner")) == 1
    sample(second)
    assert attachment.last_stats.streamed_blocks == 1
    assert first.get_attachment("offload_planner").handle is None


def _lora(module, blocks, rank: int = 2, seed: int = 3):
    """A kohya-format LoRA on the qkv and mlp layers of `blocks`, as trainers write them."""
    generator = torch.Generator().manual_seed(seed)
    lora = {}
    for block in blocks:
        for layer in ("img_attn.qkv", "txt_mlp.0") if "double" in block else ("linear1", "linear2"):
            weight = module.get_submodule(f"{block}.{layer}").weight
            key = "lora_unet_" + f"{block}.{layer}".replace(".", "_")
            lora[f"{key}.lora_down.weight"] = torch.randn(rank, weight.shape[1], generator=generator)
            lora[f"{key}.lora_up.weight"] = torch.randn(weight.shape[0], rank, generator=generator)
            lora[f"{key}.alpha"] = torch.tensor(float(rank))
    return lora


@pytest.mark.parametrize("order", ["lora then plan", "plan then lora"])
def test_lora_from_comfyuis_loader_works_under_the_plan(comfy, order):
    from comfyui_nodes.patcher import attach_plan, diffusion_model

    patcher = tiny_flux_patcher()
    module = diffusion_model(patcher)
    before = _state(module)
    # one streamed and one resident block of each kind
    lora = _lora(module, ["double_blocks.1", "double_blocks.0", "single_blocks.3", "single_blocks.1"])

    def with_lora(p):
        patched, _ = comfy.sd.load_lora_for_models(p, None, lora, 0.8, 0.0)
        return patched

    plain = sample(patcher)
    reference = sample(with_lora(patcher))
    assert not torch.equal(reference, plain)
    comfy.model_management.unload_all_models()
    # ComfyUI puts the values back after its LoRA run, in new Parameter objects of its own
    for name, param in module.named_parameters():
        assert torch.equal(param.detach(), before[name][1]), name
    before = _state(module)

    if order == "lora then plan":
        model, attachment = attach_plan(with_lora(patcher), tiny_plan())
    else:
        planned, attachment = attach_plan(patcher, tiny_plan())
        model = with_lora(planned)
    seen, probe = _ring_bound_probe(module, "single_blocks.3")
    try:
        out = sample(model)
    finally:
        probe.remove()
    assert seen and all(seen)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    comfy.model_management.unload_all_models()
    assert attachment.handle is None
    _assert_restored(module, before, same_objects=False)


def test_adapter_inputs_run_the_comfy_blocks_and_model(comfy):
    from comfyui_nodes.patcher import diffusion_model
    from runtime.families import get_family

    adapter = get_family("comfy-flux")
    module = diffusion_model(tiny_flux_patcher())
    workload = Workload(height=32, width=48, text_tokens=16)
    with torch.no_grad():
        for name, kind, block in adapter.blocks(module):
            inputs = adapter.block_inputs(module, kind, workload, "cpu", torch.float32)
            out = block(*inputs.args, **inputs.kwargs)
            first = out[0] if isinstance(out, tuple) else out
            assert torch.isfinite(first).all(), name
        inputs = adapter.model_inputs(module, workload, "cpu", torch.float32)
        out = module(**inputs)
    assert out.shape == inputs["x"].shape


def test_adapter_builds_comfyuis_flux_on_meta_with_the_same_blocks(comfy):
    from comfy_fixtures import TINY_UNET_CONFIG
    from comfyui_nodes.patcher import diffusion_model
    from runtime.families import get_family

    adapter = get_family("comfy-flux")
    meta = adapter.build(TINY_UNET_CONFIG, device="meta")
    real = diffusion_model(tiny_flux_patcher())
    assert all(p.device.type == "meta" for p in meta.parameters())
    assert [(n, tuple(p.shape)) for n, p in meta.named_parameters()] == [
        (n, tuple(p.shape)) for n, p in real.named_parameters()
    ]


def test_checkpoints_are_left_to_the_flux_family(comfy):
    from runtime.families import get_family

    adapter = get_family("comfy-flux")
    name = "model.diffusion_model.double_blocks.4.img_attn.qkv.weight"
    assert adapter.block_of_tensor(name) is None
    assert get_family("flux").block_of_tensor(name) == "transformer_blocks.4"
    with pytest.raises(NotImplementedError):
        adapter.pipeline_class()


def test_plan_of_another_family_is_refused_with_a_sentence(comfy):
    from runtime.families import get_family

    plan = tiny_plan()
    other = dataclasses.replace(plan, model=dataclasses.replace(plan.model, family="sd3"))
    with pytest.raises(PlanMismatchError, match="use a plan tuned for a flux or flux2 model"):
        get_family("comfy-flux").adopt_plan(other)


def test_a_flux2_plan_runs_comfyuis_flux2_block_for_block(comfy):
    """FLUX.2 is the same ComfyUI class with global modulation: a tiny-flux2 plan adopted onto
    it fits byte for byte, and a forward under it is identical."""
    from comfyui_nodes.patcher import diffusion_model
    from runtime import apply_plan
    from runtime.families import family_of_module

    module = diffusion_model(tiny_flux_patcher(flux2=True))
    adapter = family_of_module(module)
    assert module.params.global_modulation and adapter.name == "comfy-flux"
    workload = Workload(height=32, width=32, text_tokens=8)
    plan = build_plan(
        inventory("tiny-flux2", DType.FP32), {"transformer_blocks.1", "single_transformer_blocks.2"},
        workload=workload, target=Target("cpu", 1 << 30), prefetch_depth=1,
    )
    adopted = adapter.adopt_plan(plan)
    before = _state(module)
    inputs = adapter.model_inputs(module, workload, "cpu", torch.float32)
    with torch.no_grad():
        plain = module(**inputs)
        for name, kind, block in adapter.blocks(module):
            block_in = adapter.block_inputs(module, kind, workload, "cpu", torch.float32)
            assert block(*block_in.args, **block_in.kwargs) is not None, name
        handle = apply_plan(module, adopted, device="cpu")
        try:
            assert handle.stats.streamed_blocks == 2
            out = module(**inputs)
        finally:
            handle.remove()
    assert torch.equal(out, plain)
    _assert_restored(module, before)


@pytest.mark.gpu
def test_sampling_on_cuda_under_the_plan_matches_and_frees_the_ring(comfy, cuda_device):
    from comfyui_nodes.patcher import attach_plan, diffusion_model

    patcher = tiny_flux_patcher()
    patcher.load_device = cuda_device
    module = diffusion_model(patcher)
    plain = sample(patcher)
    comfy.model_management.unload_all_models()
    planned, attachment = attach_plan(patcher, tiny_plan())
    out = sample(planned)
    torch.testing.assert_close(out, plain, rtol=1e-4, atol=1e-4)
    stats = attachment.last_stats
    assert stats.device.startswith("cuda") and stats.streamed_blocks == 3
    comfy.model_management.unload_all_models()
    assert attachment.handle is None
    assert all(p.device.type == "cpu" for p in module.parameters())
