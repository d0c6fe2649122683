"""Issue 25 (Trust II), files: every number read from a checkpoint is finite and in range (NF4
quant state, safetensors header, GGUF metadata), through the strict JSON reader. Real files
written by bitsandbytes, safetensors and gguf-py; the real CLI."""

from __future__ import annotations

import json
import struct

import pytest
from typer.testing import CliRunner

from conftest import build_tiny_flux
from planner.cli import app
from tests.quant_files import nf4_state

runner = CliRunner()
STATE = "transformer_blocks.0.attn.to_q.weight.quant_state.bitsandbytes__nf4"


def _refused(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _nf4_with_state(tmp_path, text: str):
    import torch
    from safetensors.torch import save_file

    state = nf4_state(build_tiny_flux())
    data = json.loads(bytes(state[STATE].tolist()).decode())
    raw = json.dumps(data).replace(f'"nested_offset": {json.dumps(data["nested_offset"])}',
                                   f'"nested_offset": {text}')
    assert text in raw
    state[STATE] = torch.tensor(list(raw.encode()), dtype=torch.uint8)
    path = tmp_path / "flux-nf4.safetensors"
    save_file(state, str(path))
    return path


@pytest.mark.parametrize("value", ["NaN", "1e999", "-Infinity", "3e38"])
def test_an_nf4_quant_state_with_a_non_finite_or_absurd_offset_is_refused(tmp_path, value):
    path = _nf4_with_state(tmp_path, value)
    tune = ("tune", "--model", "tiny-flux", "--weights", str(path), "--vram", "1GB", "--gpu", "rtx-4060",
            "--trials", "2", "--db", f"sqlite:///{tmp_path / 's.db'}")
    for args in (("models", "inspect", str(path)),) + ((tune,) if value == "NaN" else ()):
        line = _refused(*args)
        assert "nested_offset" in line or "finite" in line, line
        assert str(path) in line


def test_a_safetensors_header_number_that_overflows_is_refused(tmp_path):
    header = b'{"__metadata__": {"format": "pt"}, "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4e999]}}'
    path = tmp_path / "overflow.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    line = _refused("models", "inspect", str(path))
    assert "4e999" in line or "finite" in line or "not a number" in line, line


def test_a_gguf_float_metadata_that_is_not_finite_is_refused(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "nan.gguf"
    writer = gguf.GGUFWriter(str(path), arch="flux")
    writer.add_float32("flux.scale", float("nan"))
    for name, tensor in build_tiny_flux().state_dict().items():
        writer.add_tensor(name, tensor.detach().float().numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    line = _refused("models", "inspect", str(path))
    assert "NaN or infinite" in line and "flux.scale" in line


# ---------------------------------------------------------------- problem 7: what inspect calls fine


def _inspect(path):
    return runner.invoke(app, ["models", "inspect", str(path)])


def test_a_gguf_whose_header_lists_a_tensor_too_few_is_refused(tmp_path):
    import gguf
    import numpy as np

    state = {k: v.detach().float().numpy().astype(np.float32) for k, v in build_tiny_flux().state_dict().items()}
    path = tmp_path / "short.gguf"
    writer = gguf.GGUFWriter(str(path), arch="flux")
    for name, array in state.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert _inspect(path).exit_code == 0
    raw = bytearray(path.read_bytes())
    count = struct.unpack_from("<Q", raw, 8)[0]
    struct.pack_into("<Q", raw, 8, count - 1)  # the last tensor's record stays, unread
    short = tmp_path / "one-too-few.gguf"
    short.write_bytes(bytes(raw))
    line = _refused("models", "inspect", str(short))
    assert str(short) in line


def test_an_nf4_file_with_its_quant_states_stripped_is_refused(tmp_path):
    from safetensors.torch import save_file

    state = {k: v for k, v in nf4_state(build_tiny_flux()).items() if "quant_state" not in k}
    path = tmp_path / "stripped.safetensors"
    save_file(state, str(path))
    line = _refused("models", "inspect", str(path))
    assert "stripped" in line and "quant state" in line


def test_inspect_says_when_tensors_belong_to_no_model_it_knows(tmp_path):
    import torch
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in build_tiny_flux().state_dict().items()}
    state["my_extra_head.weight"] = torch.zeros(4, 4)
    path = tmp_path / "extra.safetensors"
    save_file(state, str(path))
    result = _inspect(path)
    assert "1 tensor(s) belong to no flux model" in result.stderr and "my_extra_head.weight" in result.stderr
    data = json.loads(runner.invoke(app, ["models", "inspect", str(path), "--json"]).stdout)
    assert data["unknown_tensors"] == ["my_extra_head.weight"]
    clean = tmp_path / "clean.safetensors"
    save_file({k: v for k, v in state.items() if k != "my_extra_head.weight"}, str(clean))
    assert "warning" not in _inspect(clean).stderr
