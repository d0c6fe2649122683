"""The safetensors header reader: every malformed case refused by name, valid files read exactly."""

from __future__ import annotations

import json
import struct

import pytest

from runtime.checkpoint.header import MAX_HEADER_BYTES, read_header
from runtime.errors import CheckpointError, UserError


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def write(path, header, data: bytes = b"", length: int | None = None, pad: int = 0):
    """8-byte little-endian length + header (dict or raw bytes) + data, built by hand."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    raw += b" " * pad
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def refused(path, *words: str) -> str:
    with pytest.raises(CheckpointError) as info:
        read_header(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message, (word, message)
    assert "\n" not in message
    return message


@pytest.fixture
def f(tmp_path):
    return tmp_path / "model.safetensors"


# ---------------------------------------------------------------- length and bytes


@pytest.mark.parametrize("size", [0, 1, 7])
def test_file_shorter_than_eight_bytes(f, size):
    f.write_bytes(b"\x01" * size)
    refused(f, f"{size} bytes", "too short")


def test_header_length_over_100_mb_is_refused_before_reading(f):
    write(f, {}, length=MAX_HEADER_BYTES + 1)
    refused(f, str(MAX_HEADER_BYTES + 1), "limit")


def test_header_length_past_end_of_file(f):
    write(f, {"a": _entry()}, length=5000)
    refused(f, "5000-byte header", "truncated")


def test_huge_length_field_is_refused_without_allocating(f):
    write(f, {}, length=2**64 - 1)
    refused(f, "limit")


def test_header_not_utf8(f):
    write(f, b'{"\xff\xfe": 1}')
    refused(f, "not UTF-8")


def test_header_not_json(f):
    write(f, b'{"a": {"dtype": "F32",')
    refused(f, "not valid JSON")


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"17", b' {}', b""])
def test_header_not_a_json_object(f, raw):
    write(f, raw)
    refused(f, "JSON object")


def test_header_with_trailing_garbage_after_object(f):
    write(f, b"{} x")
    refused(f, "not valid JSON")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers(f, constant):
    raw = b'{"a": {"dtype": "F32", "shape": [%s], "data_offsets": [0, 0]}}' % constant.encode()
    write(f, raw)
    refused(f, constant)


# ---------------------------------------------------------------- names and metadata


def test_duplicate_tensor_names(f):
    raw = (
        b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
        b' "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}'
    )
    write(f, raw, b"\0" * 8)
    refused(f, "'w' twice")


def test_duplicate_field_inside_a_tensor_entry(f):
    write(f, b'{"w": {"dtype": "F32", "dtype": "F16", "shape": [1], "data_offsets": [0, 4]}}')
    refused(f, "'dtype' twice")


def test_metadata_is_optional(f):
    header = read_header(write(f, {"a": _entry()}, b"\0" * 8))
    assert dict(header.metadata) == {}


def test_metadata_values_must_be_strings(f):
    write(f, {"__metadata__": {"format": "pt", "epoch": 3}, "a": _entry()}, b"\0" * 8)
    refused(f, "'epoch'", "string")


@pytest.mark.parametrize("value", [None, "pt", ["format", "pt"]])
def test_metadata_must_be_an_object(f, value):
    write(f, {"__metadata__": value, "a": _entry()}, b"\0" * 8)
    refused(f, "__metadata__", "object")


# ---------------------------------------------------------------- one tensor's entry


def test_unknown_field_in_tensor_entry(f):
    write(f, {"blk.w": {**_entry(), "quant": "q4"}}, b"\0" * 8)
    refused(f, "'blk.w'", "unknown field 'quant'")


@pytest.mark.parametrize("field", ["dtype", "shape", "data_offsets"])
def test_missing_field_in_tensor_entry(f, field):
    entry = _entry()
    del entry[field]
    write(f, {"blk.w": entry}, b"\0" * 8)
    refused(f, "'blk.w'", f"missing the field '{field}'")


@pytest.mark.parametrize("entry", [[1, 2], "F32", None, 3])
def test_tensor_entry_not_an_object(f, entry):
    write(f, {"blk.w": entry})
    refused(f, "'blk.w'", "must be an object")


@pytest.mark.parametrize("dtype", ["F128", "bf16", "", 4, None, ["F32"]])
def test_unknown_dtype(f, dtype):
    write(f, {"blk.w": _entry(dtype=dtype)}, b"\0" * 8)
    refused(f, "'blk.w'", "unknown dtype")


@pytest.mark.parametrize(
    "shape", [[-1], [2, True], [2.0], ["2"], [None], 2, "2", {"0": 2}, [[2]]],
    ids=["negative", "bool", "float", "string", "null", "scalar", "text", "object", "nested"],
)
def test_shape_not_a_list_of_non_negative_ints(f, shape):
    write(f, {"blk.w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 8]}}, b"\0" * 8)
    refused(f, "'blk.w'", "shape")


@pytest.mark.parametrize(
    "shape", [[2**40, 2**40], [2**63], [0, 2**80], [2**31] * 4],
    ids=["product", "one-dim", "zero-then-huge", "four-dims"],
)
def test_shape_byte_size_overflow(f, shape):
    write(f, {"blk.w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 8]}}, b"\0" * 8)
    refused(f, "'blk.w'", "larger than any real tensor")


@pytest.mark.parametrize(
    "offsets",
    [[0], [0, 8, 16], [-8, 0], [0, True], [0.0, 8], "0,8", None, [0, "8"]],
    ids=["one", "three", "negative", "bool", "float", "text", "null", "string"],
)
def test_data_offsets_not_two_non_negative_ints(f, offsets):
    write(f, {"blk.w": {"dtype": "F32", "shape": [2], "data_offsets": offsets}}, b"\0" * 8)
    refused(f, "'blk.w'", "data_offsets")


def test_data_offsets_end_before_begin(f):
    write(f, {"blk.w": _entry(offsets=(8, 0))}, b"\0" * 8)
    refused(f, "'blk.w'", "end before they begin")


def test_span_differs_from_shape_times_itemsize(f):
    write(f, {"blk.w": _entry(dtype="BF16", shape=(3,), offsets=(0, 8))}, b"\0" * 8)
    refused(f, "'blk.w'", "spans 8 bytes", "needs 6")


# ---------------------------------------------------------------- layout of the data region


def test_first_tensor_must_start_at_zero(f):
    write(f, {"blk.w": _entry(offsets=(4, 12))}, b"\0" * 12)
    refused(f, "'blk.w'", "gap")


def test_gap_between_tensors(f):
    write(f, {"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(12, 20))}, b"\0" * 20)
    refused(f, "'b'", "gap")


def test_overlapping_tensors(f):
    write(f, {"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(4, 12))}, b"\0" * 12)
    refused(f, "'b'", "overlaps")


def test_data_region_shorter_than_tensors(f):
    write(f, {"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(8, 16))}, b"\0" * 12)
    refused(f, "12-byte data region", "cover 16 bytes")


def test_data_region_longer_than_tensors(f):
    write(f, {"a": _entry(offsets=(0, 8))}, b"\0" * 9)
    refused(f, "9-byte data region", "cover 8 bytes")


def test_no_tensors_but_data(f):
    write(f, {}, b"\0" * 4)
    refused(f, "4-byte data region")


def test_refusals_are_user_errors(f):
    f.write_bytes(b"")
    with pytest.raises(UserError):
        read_header(f)


def test_missing_file_names_it(tmp_path):
    refused(tmp_path / "absent.safetensors", "cannot read")


# ---------------------------------------------------------------- valid files


def test_hand_built_file_with_padding_spaces_and_empty_tensor(f):
    header = {
        "__metadata__": {"format": "pt"},
        "z.bias": _entry(dtype="BF16", shape=(2,), offsets=(8, 12)),
        "a.weight": _entry(dtype="F32", shape=(2, 1), offsets=(0, 8)),
        "empty": _entry(dtype="F16", shape=(0, 3), offsets=(12, 12)),
    }
    read = read_header(write(f, header, b"\1" * 12, pad=5))
    assert [t.name for t in read.tensors] == ["a.weight", "z.bias", "empty"]
    assert read.tensor("z.bias").shape == (2,)
    assert read.tensor("empty").nbytes == 0
    assert dict(read.metadata) == {"format": "pt"}
    assert read.data_bytes == 12
    assert read.file_bytes == f.stat().st_size


def test_empty_header_and_no_data_is_a_valid_file(f):
    read = read_header(write(f, {}))
    assert read.tensors == () and read.data_bytes == 0


def test_file_written_by_safetensors_round_trips(f):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tensors = {
        "transformer_blocks.0.attn.to_q.weight": torch.randn(6, 4).to(torch.bfloat16),
        "transformer_blocks.0.attn.to_q.bias": torch.randn(6),
        "proj_out.weight": torch.randn(3, 5).to(torch.float8_e4m3fn),
        "x_embedder.bias": torch.randn(7).to(torch.float16),
        "scalar": torch.tensor(3, dtype=torch.int64),
        "nothing": torch.zeros(0, 2),
    }
    save_file(tensors, str(f), metadata={"format": "pt", "note": "ü"})
    header = read_header(f)

    assert header.header_bytes % 8 == 0  # the writer pads with spaces
    assert dict(header.metadata) == {"format": "pt", "note": "ü"}
    assert {t.name for t in header.tensors} == set(tensors)
    tags = {torch.bfloat16: "BF16", torch.float32: "F32", torch.float8_e4m3fn: "F8_E4M3",
            torch.float16: "F16", torch.int64: "I64"}
    raw = f.read_bytes()[8 + header.header_bytes:]
    with safe_open(str(f), framework="pt") as reference:
        for info in header.tensors:
            tensor = reference.get_tensor(info.name)
            assert info.dtype == tags[tensor.dtype]
            assert info.shape == tuple(tensor.shape)
            as_bytes = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            assert raw[info.begin:info.end] == as_bytes
    assert header.data_bytes == len(raw)
