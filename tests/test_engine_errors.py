"""Errors and lifetimes of host memory around the engine: a CUDA error while staging is raised
as it is (only refused pinned memory falls back to plain copies), and a page-locked mapping
freed by the garbage collector neither synchronises the device nor goes while a copy reads it."""

from __future__ import annotations

import ctypes
import gc
import time

import pytest
import torch

from runtime.engine import host_memory, offload, staging

CUDA_ERROR = "CUDA error: an illegal memory access was encountered"


def _failing(error):
    def staged_copy(sources, dtypes):
        raise error
    return staged_copy


def test_a_cuda_error_while_staging_is_raised_as_it_is():
    # the move is planned to a CUDA device; the staged copy fails with a CUDA error, which
    # must not be taken for refused pinned memory and retried as plain copies
    tensor = torch.ones(4, 4)
    before = tensor.data_ptr()
    with pytest.raises(RuntimeError, match="illegal memory access"):
        offload._move_all([(tensor, torch.device("cuda", 0), torch.float32)], _failing(RuntimeError(CUDA_ERROR)))
    assert tensor.device.type == "cpu" and tensor.data_ptr() == before  # nothing moved


def test_refused_staging_memory_is_its_own_error():
    assert not issubclass(staging.StagingRefused, RuntimeError)


@pytest.mark.gpu
def test_refused_staging_memory_falls_back_to_plain_copies(cuda_device):
    tensor = torch.arange(16.0).view(4, 4)
    offload._move_all([(tensor, cuda_device, torch.float32)], _failing(staging.StagingRefused("no pinned memory")))
    assert tensor.device == cuda_device and torch.equal(tensor.cpu(), torch.arange(16.0).view(4, 4))


def _deferred(address: int) -> bool:
    return any(ctypes.addressof(p) == address for p in host_memory._DEFERRED)


@pytest.mark.gpu
def test_a_freed_mapping_waits_for_its_copy_without_synchronising(cuda_device):
    tensor, pages = host_memory.lockable_empty(1 << 20, torch.float32)
    tensor.fill_(3.0)
    assert host_memory.page_lock(pages, cuda_device)
    other = torch.cuda.Stream(cuda_device)  # unrelated work the finalizer must not wait for
    with torch.cuda.stream(other):
        torch.cuda._sleep(2_000_000_000)
    copier = torch.cuda.Stream(cuda_device)
    out = torch.empty(1 << 20, device=cuda_device)
    with torch.cuda.stream(copier):
        torch.cuda._sleep(500_000_000)  # the copy starts late
        out.copy_(tensor, non_blocking=True)
        event = torch.cuda.Event()
        event.record(copier)
    host_memory.note_read(tensor, event)
    address = ctypes.addressof(pages)
    start = time.perf_counter()
    del tensor, pages
    gc.collect()
    assert time.perf_counter() - start < 0.05 and not other.query()  # no synchronize
    assert _deferred(address) and not event.query()  # kept (locked) while the copy reads it
    event.synchronize()
    host_memory.release_deferred()
    assert not _deferred(address)
    assert torch.equal(out, torch.full_like(out, 3.0))
    other.synchronize()
