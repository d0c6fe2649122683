"""The fast apply/remove paths on CPU: the staging chunks that carry resident weights between
host and device, the exact-size page-lockable host buffers, and a model after `remove()` whose
tensors each own their storage again and that saves with safetensors like before."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from runtime.apply import apply_plan
from runtime.engine import host_memory, staging
from runtime.plan import CastMode, HostMemory
from runtime.dtypes import DType
from tests.conftest import build_tiny_flux
from tests.test_engine import N_BLOCKS, _fp8_pair, plan_for, run


def _tensors(seed=0):
    """Odd sizes in several dtypes, one non-multiple of the alignment, one empty-ish scalar."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 5), (257,), (16, 16), (1,), (7, 3, 2), (1000,)]
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float32, torch.bfloat16,
              torch.float32]
    return [torch.randn(s, generator=g).to(d) for s, d in zip(shapes, dtypes)]


def _own_storages(tensors, others=()):
    ptrs = [t.untyped_storage().data_ptr() for t in tensors]
    return len(set(ptrs)) == len(ptrs) and not set(ptrs) & {
        o.untyped_storage().data_ptr() for o in others}


@pytest.mark.parametrize("chunk_bytes", [64, 256, 1000, None])
def test_staged_copies_are_exact_fresh_tensors(chunk_bytes):
    sources = _tensors()
    dtypes = [t.dtype for t in sources]
    outs = staging.to_device(sources, dtypes, "cpu", chunk_bytes=chunk_bytes)
    assert all(torch.equal(o, s) and o.dtype == s.dtype and o.shape == s.shape
               for o, s in zip(outs, sources))
    assert _own_storages(outs, sources)
    back = staging.to_host(outs, dtypes, chunk_bytes=chunk_bytes)
    assert all(torch.equal(b, s) for b, s in zip(back, sources)) and _own_storages(back, outs)


def test_staged_copies_cast_like_tensor_to():
    fp8 = [t.to(torch.float8_e4m3fn) for t in _tensors(1)]
    up = staging.to_device(fp8, [torch.bfloat16] * len(fp8), "cpu", chunk_bytes=128)
    assert all(u.dtype == torch.bfloat16 and torch.equal(u, f.to(torch.bfloat16))
               for u, f in zip(up, fp8))
    down = staging.to_host(up, [torch.float8_e4m3fn] * len(up), chunk_bytes=128)
    assert all(d.dtype == torch.float8_e4m3fn and torch.equal(d.view(torch.uint8),
                                                              f.view(torch.uint8))
               for d, f in zip(down, fp8))


@pytest.mark.parametrize("chunk_bytes", [64, 200, 4096])
def test_pieces_cover_every_element_once_within_chunks(chunk_bytes):
    sizes = [(4, 10), (2, 257), (1, 3), (8, 100), (2, 1)]
    covered = [[0] * n for _, n in sizes]
    in_chunk: list[tuple[int, int]] = []
    current = None
    for chunk, offset, item, start, count in staging._pieces(sizes, chunk_bytes):
        itemsize = sizes[item][0]
        assert offset % 64 == 0 and count > 0
        assert offset + count * itemsize <= chunk_bytes
        if chunk != current:
            in_chunk, current = [], chunk
            assert offset == 0, "a chunk is filled from its start after a switch"
        assert all(offset >= end or offset + count * itemsize <= begin for begin, end in in_chunk)
        in_chunk.append((offset, offset + count * itemsize))
        for k in range(start, start + count):
            covered[item][k] += 1
    assert all(c == 1 for item in covered for c in item)


def test_lockable_buffer_is_exact_page_aligned_and_freed_with_its_last_view():
    tensor, pages = host_memory.lockable_empty(1000, torch.bfloat16)
    assert tensor.shape == (1000,) and tensor.dtype == torch.bfloat16
    assert tensor.untyped_storage().nbytes() == 2000 == len(pages)
    assert tensor.data_ptr() % 4096 == 0
    view = tensor[10:20]
    view.fill_(3.0)
    alive = weakref.ref(pages)
    del tensor, pages
    gc.collect()
    assert alive() is not None, "a view still holds the mapping"
    del view
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize("streamed_idx", [list(range(N_BLOCKS)), [0, 2, 4, 6]])
def test_model_saves_with_safetensors_after_remove(tmp_path, streamed_idx):
    from safetensors.torch import load_file, save_file

    model = build_tiny_flux()
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    save_file(model.state_dict(), tmp_path / "before.safetensors")
    handle = apply_plan(model, plan_for(model, streamed_idx, host=HostMemory.PINNED), "cpu")
    run(model, seeds=(3,))
    handle.remove()
    # safetensors 0.4+ saves tensors that share a storage without overlapping, so own
    # storages are checked directly; torch.save would write a shared pack once per tensor
    assert _own_storages(list(model.state_dict().values()))
    save_file(model.state_dict(), tmp_path / "after.safetensors")
    loaded = load_file(tmp_path / "after.safetensors")
    assert loaded.keys() == before.keys()
    assert all(torch.equal(loaded[n], before[n]) and loaded[n].dtype == before[n].dtype
               for n in before)


@pytest.mark.parametrize("cast", list(CastMode))
def test_fp8_model_after_remove_is_bitwise_its_storage(cast):
    model, _ = _fp8_pair()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = plan_for(model, [0, 3, 5], depth=2, cast=cast, storage=DType.FP8)
    handle = apply_plan(model, plan, "cpu")
    run(model, seeds=(0,), dtype=torch.bfloat16)
    handle.remove()
    for name, param in model.named_parameters():
        assert param.dtype == before[name].dtype, name
        assert torch.equal(param.view(torch.uint8), before[name].view(torch.uint8)), name
    assert _own_storages([p for p in model.parameters()])
