"""The GGUF header reader on real files written by gguf-py's writer, and on broken ones."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from runtime.checkpoint.gguf import read_gguf_header
from runtime.errors import CheckpointError


def write(path, tensors: dict, metadata: dict | None = None, quant=None):
    import gguf
    from gguf.quants import quantize

    writer = gguf.GGUFWriter(str(path), arch="flux")
    for key, value in (metadata or {}).items():
        writer.add_uint32(key, value)
    for name, array in tensors.items():
        if quant is not None and array.ndim == 2:
            kind = gguf.GGMLQuantizationType[quant]
            packed = quantize(array, kind)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=kind)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def sample(tmp_path):
    tensors = {
        "double_blocks.0.img_attn.qkv.weight": np.random.default_rng(0).standard_normal((6, 64), np.float32),
        "double_blocks.0.img_attn.qkv.bias": np.zeros(6, np.float32),
    }
    return write(tmp_path / "a.gguf", tensors, quant="Q8_0")


def test_agrees_with_gguf_py_reader(sample):
    import gguf

    header = read_gguf_header(sample)
    theirs = gguf.GGUFReader(str(sample))
    assert header.version == 3 and header.alignment == 32
    assert header.metadata["general.architecture"] == "flux"
    by_name = {t.name: t for t in header.tensors}
    assert len(by_name) == len(theirs.tensors) == 2
    for t in theirs.tensors:
        ours = by_name[t.name]
        assert ours.quant == t.tensor_type.name
        assert ours.shape == tuple(int(d) for d in reversed(t.shape))
        assert header.data_start + ours.begin == t.data_offset
        assert ours.nbytes == t.n_bytes
    weight = by_name["double_blocks.0.img_attn.qkv.weight"]
    assert weight.quant == "Q8_0" and weight.shape == (6, 64) and weight.nbytes == 6 * 2 * 34


def refused(path, *words):
    with pytest.raises(CheckpointError) as info:
        read_gguf_header(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message, message
    return message


def patched(path, offset: int, raw: bytes):
    blob = bytearray(path.read_bytes())
    blob[offset:offset + len(raw)] = raw
    path.write_bytes(bytes(blob))
    return path


def test_not_gguf(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 32)
    refused(path, "GGUF magic")


def test_unknown_version(sample):
    refused(patched(sample, 4, struct.pack("<I", 7)), "version 7")


def test_big_endian(sample):
    refused(patched(sample, 4, struct.pack(">I", 3)), "big-endian", "gguf_convert_endian")


def test_truncated_inside_header(sample):
    sample.write_bytes(sample.read_bytes()[:40])
    refused(sample, "truncated")


def test_truncated_data(sample):
    sample.write_bytes(sample.read_bytes()[:-10])
    refused(sample, "truncated", "double_blocks.0.img_attn.qkv.bias")


def test_counts_beyond_the_file(sample):
    refused(patched(sample, 8, struct.pack("<Q", 2**40)), "declares", "tensors")


def test_bad_alignment(tmp_path):
    path = write(tmp_path / "b.gguf", {"t": np.zeros(4, np.float32)}, {"general.alignment": 24})
    refused(path, "general.alignment", "power of two")


def test_unknown_ggml_type(sample):
    blob = sample.read_bytes()
    name = b"double_blocks.0.img_attn.qkv.weight"
    at = blob.index(name) + len(name) + 4 + 2 * 8  # n_dims, two dims
    refused(patched(sample, at, struct.pack("<I", 999)), "unknown ggml type 999")


def test_row_not_a_whole_block(sample):
    blob = sample.read_bytes()
    name = b"double_blocks.0.img_attn.qkv.weight"
    at = blob.index(name) + len(name) + 4
    refused(patched(sample, at, struct.pack("<Q", 48)), "multiple of the 32-element Q8_0 block")


def test_duplicate_tensor_name(tmp_path):
    path = write(tmp_path / "d.gguf", {"aa": np.zeros(8, np.float32), "ab": np.zeros(8, np.float32)})
    blob = path.read_bytes()
    at = blob.index(b"ab")
    refused(patched(path, at, b"aa"), "names tensor 'aa' twice")


def test_non_utf8_key(sample):
    at = sample.read_bytes().index(b"general.architecture")
    refused(patched(sample, at, b"\xff"), "not UTF-8")


def test_bool_other_than_0_or_1(tmp_path):
    import gguf

    path = tmp_path / "b.gguf"
    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_bool("flag", True)
    writer.add_tensor("t", np.zeros(4, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert read_gguf_header(path).metadata["flag"] is True
    at = path.read_bytes().index(b"flag") + 4 + 4  # the key, the value type
    refused(patched(path, at, b"\x02"), "boolean of value 2")
