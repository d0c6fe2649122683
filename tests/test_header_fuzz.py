"""Fuzzing the header reader: whatever the bytes, only `CheckpointError` may escape.

The seed is a real file written by safetensors; the strategies throw random bytes at the
reader and mutate the seed (flip bytes, truncate, rewrite the length field, edit JSON fields).
When the reader accepts a file, what it returns must describe that file exactly.
"""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.checkpoint.header import Header, read_header
from runtime.errors import CheckpointError

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> bytes:
    import torch
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("seed") / "seed.safetensors"
    save_file(
        {
            "transformer_blocks.0.attn.to_q.weight": torch.ones(4, 4, dtype=torch.bfloat16),
            "transformer_blocks.0.attn.to_q.bias": torch.ones(4),
            "single_transformer_blocks.0.proj_out.weight": torch.ones(2, 4).to(torch.float8_e4m3fn),
            "norm_out.linear.bias": torch.zeros(0),
        },
        str(path),
        metadata={"format": "pt"},
    )
    return path.read_bytes()


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "fuzzed.safetensors"


def split(blob: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


def join(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw + data


def check(target, blob: bytes) -> Header | None:
    """Read `blob` from a real file: accepted and exact, or refused with CheckpointError."""
    target.write_bytes(blob)
    try:
        header = read_header(target)
    except CheckpointError as e:
        assert str(target) in str(e)
        return None
    assert header.file_bytes == len(blob)
    position = 0
    for info in header.tensors:
        assert info.begin == position
        position = info.end
    assert position == header.data_bytes
    return header


def test_seed_is_valid(target, seed):
    header = check(target, seed)
    assert header is not None and len(header.tensors) == 4


@FUZZ
@given(blob=st.binary(max_size=256))
def test_random_bytes(target, blob):
    check(target, blob)


@FUZZ
@given(body=st.binary(max_size=256), length=st.integers(0, 2**64 - 1))
def test_random_length_field_and_body(target, body, length):
    check(target, struct.pack("<Q", length) + body)


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
def test_truncated_or_extended(target, seed, data):
    cut = data.draw(st.integers(0, len(seed)))
    tail = data.draw(st.binary(max_size=16))
    blob = seed[:cut] + tail
    (length,) = struct.unpack("<Q", seed[:8])
    same_layout = len(blob) == len(seed) and blob[: 8 + length] == seed[: 8 + length]
    assert (check(target, blob) is not None) == same_layout


@FUZZ
@given(delta=st.integers(-(2**20), 2**20).filter(lambda d: d != 0))
def test_length_field_off_by_any_amount(target, seed, delta):
    (length,) = struct.unpack("<Q", seed[:8])
    new = max(0, length + delta)
    check(target, struct.pack("<Q", new) + seed[8:])


def _tensor_names(header: dict) -> list[str]:
    return sorted(k for k in header if k != "__metadata__")


@FUZZ
@given(data=st.data(), field=st.sampled_from(["dtype", "shape", "data_offsets"]), value=json_values)
def test_field_replaced_by_any_json(target, seed, data, field, value):
    header, body = split(seed)
    header[data.draw(st.sampled_from(_tensor_names(header)))][field] = value
    check(target, join(header, body))


@FUZZ
@given(data=st.data())
def test_edited_entries(target, seed, data):
    header, body = split(seed)
    name = data.draw(st.sampled_from(sorted(header)))
    action = data.draw(st.sampled_from(["delete", "add", "replace_entry", "rename"]))
    if action == "replace_entry" or name == "__metadata__":
        header[name] = data.draw(json_values)
    elif action == "delete":
        del header[name][data.draw(st.sampled_from(sorted(header[name])))]
    elif action == "add":
        header[name][data.draw(st.text(max_size=6))] = data.draw(json_values)
    else:
        header[data.draw(st.text(max_size=12))] = header.pop(name)
    body = body[: data.draw(st.integers(0, len(body)))] if data.draw(st.booleans()) else body
    check(target, join(header, body))


@FUZZ
@given(data=st.data())
def test_shifted_offsets_and_shapes(target, seed, data):
    header, body = split(seed)
    name = data.draw(st.sampled_from(_tensor_names(header)))
    entry = header[name]
    entry["data_offsets"] = [o + data.draw(st.integers(-16, 16)) for o in entry["data_offsets"]]
    entry["shape"] = [d + data.draw(st.integers(-2, 2)) for d in entry["shape"]]
    check(target, join(header, body))
