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
