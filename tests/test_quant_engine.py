"""The engine on quantized tiny-flux checkpoints (GGUF Q8_0 and Q4_0, bitsandbytes NF4) on CPU:
packed blocks streamed and dequantized on use (`auto`) or dequantized on the host (`pre`)
compute bit for bit what the plain model computes when it is dequantized ahead of time with
the same functions; plans count packed bytes; `remove()` gives back the packed tensors."""

from __future__ import annotations

import pytest
import torch

from runtime.apply import apply_plan
from runtime.catalog import get_model
from runtime.checkpoint.load import load_transformer
from runtime.checkpoint.load_quantized import dequantize_model
from runtime.dtypes import DType
from runtime.engine.quantized import quant_info
from runtime.families import get_family
from runtime.inventory import inventory_of_checkpoint, inventory_of_module
from runtime.plan import CastMode, HostMemory, Target, build_plan
from runtime.workload import Workload
from tests.conftest import build_tiny_flux
from tests.engine_probes import block_homes, moved
from tests.quant_files import save_gguf, save_nf4
from tests.test_engine import flux_inputs

pytest.importorskip("bitsandbytes")

FILES = {
    "q8_0": lambda m, d: save_gguf(m.state_dict(), d / "tiny-Q8_0.gguf", "Q8_0"),
    "q4_0": lambda m, d: save_gguf(m.state_dict(), d / "tiny-Q4_0.gguf", "Q4_0"),
    "nf4": lambda m, d: save_nf4(m, d / "tiny-nf4.safetensors"),
}


@pytest.fixture(scope="module", params=sorted(FILES))
def checkpoint(request, tmp_path_factory):
    path = FILES[request.param](build_tiny_flux(), tmp_path_factory.mktemp(request.param))
    return request.param, path


def load(path):
    return load_transformer(path, dict(get_model("tiny-flux").config), "flux")


def plain(path):
    model = load(path)
    dequantize_model(model, torch.bfloat16)
    return model.to(torch.bfloat16)


def run(model, seeds=(0, 1)):
    with torch.no_grad():
        return [model(**flux_inputs(s, torch.bfloat16)).sample for s in seeds]


def plan_for(model, storage, streamed_idx, cast, depth=2):
    inv = inventory_of_module(model, get_family("flux"), "tiny-flux", storage)
    streamed = {inv.blocks[i].name for i in streamed_idx}
    return build_plan(inv, streamed, workload=Workload(64, 64, text_tokens=8),
                      target=Target("test", 1 << 30), prefetch_depth=depth,
                      host_memory=HostMemory.PAGEABLE, cast=cast)


@pytest.mark.parametrize("cast", [CastMode.AUTO, CastMode.PRE])
@pytest.mark.parametrize("streamed", [[], [0, 2, 4, 6], list(range(8))])
def test_offloaded_equals_plain_dequantized(checkpoint, cast, streamed):
    kind, path = checkpoint
    expected = run(plain(path))
    model = load(path)
    plan = plan_for(model, DType(kind), streamed, cast)
    assert all(b.quant == (kind,) for b in plan.blocks)
    packed = {n: t.data.clone() for n, t in model.named_parameters()}
    handle = apply_plan(model, plan, device="cpu")
    homes = block_homes(model, get_family("flux"))
    got = run(model)
    for e, g in zip(expected, got):
        assert torch.equal(e, g)  # bitwise: the same dequantization, the same bf16 matmuls
    assert moved(homes) == []  # every block tensor in its own storage between forwards
    handle.remove()
    for name, tensor in model.named_parameters():
        assert tensor.dtype == packed[name].dtype and torch.equal(tensor.data, packed[name]), name
        assert (quant_info(tensor) is not None) == (tensor.dtype == torch.uint8)


def test_packed_blocks_travel_packed(checkpoint):
    kind, path = checkpoint
    model = load(path)
    auto = apply_plan(model, plan_for(model, DType(kind), list(range(8)), CastMode.AUTO), "cpu")
    auto_bytes = auto.stats.pageable_bytes
    auto.remove()
    pre = apply_plan(model, plan_for(model, DType(kind), list(range(8)), CastMode.PRE), "cpu")
    pre_bytes = pre.stats.pageable_bytes
    pre.remove()
    assert auto_bytes < pre_bytes * 0.75  # packed bytes on the host, not bf16


def test_plan_from_the_file_matches_the_loaded_model(checkpoint):
    kind, path = checkpoint
    inv = inventory_of_checkpoint("tiny-flux", path)
    assert inv.storage_dtype is DType(kind)
    model = load(path)
    ours = inventory_of_module(model, get_family("flux"), "tiny-flux", DType(kind))
    assert [(b.name, b.bytes) for b in inv.blocks] == [(b.name, b.bytes) for b in ours.blocks]
    plan = build_plan(inv, {inv.blocks[1].name}, workload=Workload(64, 64, text_tokens=8),
                      target=Target("test", 1 << 30), cast=CastMode.AUTO)
    handle = apply_plan(model, plan, device="cpu")  # the file's plan fits the loaded model
    handle.remove()


def test_dequantized_weights_are_close_to_the_original(checkpoint):
    kind, path = checkpoint
    original = build_tiny_flux()
    model = plain(path)
    # of the tensor's largest magnitude: 8-bit codes err by under 1 %; 4-bit codes by half the
    # widest code gap of a block's scale (NF4: (1 - 0.723) / 2 of its absmax), under 25 %
    tolerance = {"q8_0": 0.01, "q4_0": 0.25, "nf4": 0.25}[kind]
    for (name, a), b in zip(original.named_parameters(), model.parameters()):
        assert (a - b.float()).abs().max() <= tolerance * max(a.abs().max(), 1e-3), name


@pytest.mark.parametrize("storage", [DType.Q8_0, DType.Q4_K, DType.NF4])
def test_profiler_times_dequantization(storage):
    from profiler.blocks import dequant_ms

    block = build_tiny_flux().transformer_blocks[0]
    device = torch.device("cpu")
    if storage is DType.Q4_K:  # no row of tiny-flux is a whole 256-element K-quant block
        assert dequant_ms(block, device, storage) == 0.0
        return
    assert dequant_ms(block, device, storage) > 0.0


@pytest.mark.gpu
@pytest.mark.parametrize("kind", sorted(FILES))
def test_offloaded_equals_plain_on_cuda(kind, tmp_path, cuda_device):
    """Dequantized on the GPU on use, streamed from pinned memory: the plain model dequantized
    on the GPU with the same functions computes the same bits."""
    path = FILES[kind](build_tiny_flux(), tmp_path)
    reference = load(path).to(cuda_device)  # packed bytes on the GPU, dequantized there
    dequantize_model(reference, torch.bfloat16)
    reference.to(torch.bfloat16)
    with torch.no_grad():
        expected = [reference(**flux_inputs(s, torch.bfloat16, cuda_device)).sample for s in (0, 1)]
    model = load(path)
    inv = inventory_of_module(model, get_family("flux"), "tiny-flux", DType(kind))
    plan = build_plan(inv, {b.name for b in inv.blocks[::2]}, workload=Workload(64, 64, text_tokens=8),
                      target=Target("test", 1 << 30), prefetch_depth=2,
                      host_memory=HostMemory.PINNED, cast=CastMode.AUTO)
    handle = apply_plan(model, plan, device=cuda_device)
    with torch.no_grad():
        got = [model(**flux_inputs(s, torch.bfloat16, cuda_device)).sample for s in (0, 1)]
    handle.remove()
    for e, g in zip(expected, got):
        assert torch.equal(e, g)


@pytest.mark.gpu
@pytest.mark.parametrize("storage", [DType.Q8_0, DType.NF4])
def test_profiler_times_dequantization_on_cuda(storage, cuda_device):
    from profiler.blocks import dequant_ms

    block = build_tiny_flux().transformer_blocks[0].to(cuda_device)
    assert dequant_ms(block, cuda_device, storage) > 0.0
