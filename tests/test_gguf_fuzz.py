"""Fuzzing the GGUF reader: whatever the bytes, only `CheckpointError` may escape, and a file it
accepts reads the same with gguf-py's own reader (names, types, shapes, offsets, sizes)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.checkpoint.gguf import GGUFHeader, read_gguf_header
from runtime.errors import CheckpointError

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> bytes:
    import gguf
    from gguf.quants import quantize

    path = tmp_path_factory.mktemp("seed") / "seed.gguf"
    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_string("general.name", "seed")
    writer.add_array("list", [1, 2, 3])
    writer.add_bool("flag", True)
    packed = quantize(np.ones((2, 32), np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("double_blocks.0.img_attn.qkv.weight", packed, raw_shape=packed.shape,
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("double_blocks.0.img_attn.qkv.bias", np.zeros(2, np.float32))
    writer.add_tensor("img_in.weight", np.zeros((2, 3), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "fuzzed.gguf"


def check(target, blob: bytes) -> GGUFHeader | None:
    target.write_bytes(blob)
    try:
        header = read_gguf_header(target)
    except CheckpointError as e:
        assert str(target) in str(e)
        return None
    import gguf

    theirs = {t.name: t for t in gguf.GGUFReader(str(target)).tensors}
    assert len(theirs) == len(header.tensors)
    end = header.data_start
    for info in header.tensors:
        t = theirs[info.name]
        assert info.quant == t.tensor_type.name
        assert header.data_start + info.begin == t.data_offset
        assert info.nbytes == t.n_bytes
        assert header.data_start + info.begin >= end
        end = header.data_start + info.end
    assert end <= len(blob)
    return header


def test_seed_is_valid(target, seed):
    header = check(target, seed)
    assert header is not None and len(header.tensors) == 3
    assert header.metadata["list"] == [1, 2, 3] and header.metadata["flag"] is True


@FUZZ
@given(blob=st.binary(max_size=256))
def test_random_bytes(target, blob):
    check(target, b"GGUF" + blob)


@FUZZ
@given(data=st.data())
def test_flipped_bytes(target, seed, data):
    blob = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    check(target, bytes(blob))


@FUZZ
@given(data=st.data())
def test_truncated(target, seed, data):
    """Accepted exactly when the cut leaves the last tensor whole (the writer pads after it)."""
    target.write_bytes(seed)
    whole = read_gguf_header(target)
    last = whole.data_start + whole.tensors[-1].end
    cut = data.draw(st.integers(0, len(seed) - 1))
    assert (check(target, seed[:cut]) is not None) == (cut >= last)


@FUZZ
@given(data=st.data(), value=st.integers(0, 2**64 - 1))
def test_any_uint64_field(target, seed, data, value):
    """Any 8 bytes of the header (counts, lengths, dimensions, offsets) set to any number."""
    header_end = read_gguf_header_end(seed)
    at = data.draw(st.integers(4, header_end - 8))
    blob = bytearray(seed)
    blob[at:at + 8] = struct.pack("<Q", value)
    check(target, bytes(blob))


def read_gguf_header_end(seed: bytes) -> int:
    return seed.index(b"\0" * 8, seed.index(b"img_in.weight"))
