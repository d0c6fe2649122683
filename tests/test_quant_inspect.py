"""`inspect_checkpoint` and `planner models inspect` on GGUF and bitsandbytes NF4 files written
here (gguf-py's writer, bitsandbytes on CPU): blocks in their packed bytes, by quant type."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from planner.cli import app
from runtime.checkpoint.header import read_header
from runtime.checkpoint.inspect import Naming, inspect_checkpoint
from runtime.checkpoint.nf4 import nf4_weights
from runtime.errors import CheckpointError
from tests.conftest import build_tiny_flux
from tests.quant_files import nf4_state, save_gguf, save_nf4

bnb = pytest.importorskip("bitsandbytes")  # in the test extra; runs on CPU


def test_gguf_q8_0_flux_blocks_in_packed_bytes(tmp_path):
    import gguf

    model = build_tiny_flux()
    path = save_gguf(model.state_dict(), tmp_path / "flux-Q8_0.gguf", "Q8_0")
    report = inspect_checkpoint(path)
    assert report.family == "flux" and report.format.value == "gguf"
    assert report.naming is Naming.ORIGINAL
    assert [b.name for b in report.blocks] == [
        *(f"transformer_blocks.{i}" for i in range(3)),
        *(f"single_transformer_blocks.{i}" for i in range(5)),
    ]
    for block in report.blocks:
        assert "q8_0" in block.bytes_by_dtype and "fp32" in block.bytes_by_dtype
    # every byte of every tensor is counted once, in the file's own sizes
    reader = gguf.GGUFReader(str(path))
    assert report.total_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    assert report.total_tensors == len(reader.tensors)
    # Q8_0 is 34 bytes per 32 weights: 1.0625 bytes each
    block = report.blocks[0]
    bf16 = sum(t.numel() for t in model.transformer_blocks[0].parameters() if t.ndim == 2) * 2
    assert block.bytes_by_dtype["q8_0"] < bf16 * 0.6


def test_gguf_q4_k_with_comfyui_prefix(tmp_path):
    from runtime.families import get_family

    # rows of 256 elements: the K-quant block
    config = {
        "patch_size": 1, "in_channels": 16, "num_layers": 1, "num_single_layers": 1,
        "attention_head_dim": 128, "num_attention_heads": 2, "joint_attention_dim": 256,
        "pooled_projection_dim": 256, "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
    }
    model = get_family("flux").build(config, device="cpu")
    path = save_gguf(model.state_dict(), tmp_path / "flux-Q4_K.gguf", "Q4_K", zero_blocks=True,
                     prefix="model.diffusion_model.")
    report = inspect_checkpoint(path)
    assert report.family == "flux" and len(report.blocks) == 2
    double = report.blocks[0]
    qkv = 3 * 256 * 256  # img_attn.qkv: 144 bytes per 256 weights
    assert double.bytes_by_dtype["q4_k"] >= 2 * qkv // 256 * 144


def test_nf4_flux_blocks_in_packed_bytes(tmp_path):
    model = build_tiny_flux()
    path = save_nf4(model, tmp_path / "flux-nf4.safetensors")
    report = inspect_checkpoint(path)
    assert report.family == "flux" and report.format.value == "nf4"
    assert report.naming is Naming.DIFFUSERS
    assert len(report.blocks) == 8
    header = read_header(path)
    assert report.total_bytes == header.data_bytes
    weights = nf4_weights(header)
    linears = [n for n, m in model.named_modules() if isinstance(m, __import__("torch").nn.Linear)]
    assert sorted(w.name for w in weights) == sorted(f"{n}.weight" for n in linears)
    assert report.total_tensors == len(header.tensors) - sum(len(w.tensors) - 1 for w in weights)
    for block in report.blocks:
        assert set(block.bytes_by_dtype) == {"nf4", "bf16"}
    q = next(w for w in weights if w.name == "transformer_blocks.0.attn.to_q.weight")
    assert q.shape == (32, 32) and q.blocksize == 64 and q.nested and q.dtype == "bfloat16"


def nf4_file(tmp_path, edit):
    from safetensors.torch import save_file

    state = nf4_state(build_tiny_flux())
    edit(state)
    path = tmp_path / "bad-nf4.safetensors"
    save_file(state, str(path))
    return path


def refused(path, *words):
    with pytest.raises(CheckpointError) as info:
        inspect_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message, message


def test_nf4_missing_absmax(tmp_path):
    name = "transformer_blocks.0.attn.to_q.weight"
    path = nf4_file(tmp_path, lambda s: s.pop(f"{name}.absmax"))
    refused(path, f"{name}.absmax", "not its tensor")


def test_nf4_weight_of_the_wrong_size(tmp_path):
    import torch

    name = "transformer_blocks.0.attn.to_q.weight"

    def edit(state):
        state[name] = torch.zeros(10, 1, dtype=torch.uint8)

    refused(nf4_file(tmp_path, edit), name, "needs U8 with 512")


def test_fp4_is_refused_with_the_fix(tmp_path):
    import torch

    name = "transformer_blocks.0.attn.to_q.weight"

    def edit(state):
        state[f"{name}.quant_state.bitsandbytes__fp4"] = state.pop(
            f"{name}.quant_state.bitsandbytes__nf4"
        )

    refused(nf4_file(tmp_path, edit), "fp4", "bnb_4bit_quant_type='nf4'")


def test_nf4_state_not_json(tmp_path):
    import torch

    name = "transformer_blocks.0.attn.to_q.weight.quant_state.bitsandbytes__nf4"

    def edit(state):
        state[name] = torch.tensor(list(b"{nope"), dtype=torch.uint8)

    refused(nf4_file(tmp_path, edit), name, "not UTF-8 JSON")


def test_cli_inspect_gguf(tmp_path):
    path = save_gguf(build_tiny_flux().state_dict(), tmp_path / "flux-Q8_0.gguf", "Q8_0")
    result = CliRunner().invoke(app, ["models", "inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{path}: flux, gguf, original naming, 1 file\n")
    assert "q8_0" in result.stdout
    result = CliRunner().invoke(app, ["models", "inspect", str(path), "--json"])
    data = json.loads(result.stdout)
    assert data["format"] == "gguf"
    assert data["total"]["bytes"] == inspect_checkpoint(path).total_bytes


def test_cli_inspect_broken_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)
    result = CliRunner().invoke(app, ["models", "inspect", str(path)])
    assert result.exit_code != 0
    assert str(path) in result.output and "Traceback" not in result.output


from tests.family_support import support, tiny_models  # noqa: E402


@pytest.mark.parametrize("family, model_id", tiny_models())
def test_every_family_in_gguf_and_nf4(family, model_id, tmp_path):
    from runtime.inventory import inventory

    from runtime.families import get_family

    pipe = support(family).build_tiny_pipeline(model_id)
    transformer = getattr(pipe, get_family(family).denoiser)
    state = {k: v.contiguous() for k, v in transformer.state_dict().items()}
    blocks = [b.name for b in inventory(model_id).blocks]
    original = support(family).to_original(dict(state))
    files = {"diffusers": state} if original is None else {"original": original}
    for naming, tensors in files.items():
        path = save_gguf(tensors, tmp_path / f"{naming}-Q8_0.gguf", "Q8_0", bfl=False)
        report = inspect_checkpoint(path)
        assert (report.family, report.naming.value, report.format.value) == (family, naming, "gguf")
        assert [b.name for b in report.blocks] == blocks
        assert any("q8_0" in b.bytes_by_dtype for b in report.blocks)
    report = inspect_checkpoint(save_nf4(transformer, tmp_path / "nf4.safetensors"))
    assert (report.family, report.format.value) == (family, "nf4")
    assert [b.name for b in report.blocks] == blocks
    assert all("nf4" in b.bytes_by_dtype for b in report.blocks)
