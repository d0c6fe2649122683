"""`inspect_checkpoint` and `planner models inspect` on real safetensors files and folders."""

from __future__ import annotations

import json
import os
import struct
import time

import pytest
from typer.testing import CliRunner

from conftest import build_tiny_flux
from planner.cli import app
from runtime.checkpoint.inspect import Naming, inspect_checkpoint
from runtime.dtypes import DType
from runtime.errors import CheckpointError
from runtime.inventory import inventory

ORIGINAL = {"transformer_blocks.": "double_blocks.", "single_transformer_blocks.": "single_blocks."}
TINY_ORDER = [f"transformer_blocks.{i}" for i in range(3)] + [
    f"single_transformer_blocks.{i}" for i in range(5)
]


def stored(state_dict: dict, storage: DType) -> dict:
    """The state dict as a checkpoint stores it: fp8 keeps 2-D weights in fp8, the rest bf16."""
    import torch

    out = {}
    for name, tensor in state_dict.items():
        if storage.is_fp8:
            dtype = storage.torch() if tensor.dim() >= 2 else torch.bfloat16
        else:
            dtype = storage.torch()
        out[name] = tensor.to(dtype).contiguous()
    return out


def original_naming(state_dict: dict, prefix: str = "") -> dict:
    out = {}
    for name, tensor in state_dict.items():
        for new, old in ORIGINAL.items():
            if name.startswith(new):
                name = old + name[len(new):]
                break
        out[prefix + name] = tensor
    return out


@pytest.fixture(scope="module")
def tiny_state():
    return build_tiny_flux().state_dict()


def save(state: dict, path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))


def assert_matches_inventory(report, storage: DType) -> None:
    inv = inventory("tiny-flux", storage)
    assert [b.name for b in report.blocks] == TINY_ORDER
    assert [b.kind for b in report.blocks] == ["double"] * 3 + ["single"] * 5
    assert [b.index for b in report.blocks] == list(range(8))
    for block, expected in zip(report.blocks, inv.blocks):
        assert dict(block.bytes_by_dtype) == dict(expected.bytes_by_dtype), block.name
    assert report.non_block_bytes == inv.non_block_bytes
    assert report.total_bytes == inv.total_bytes


# ---------------------------------------------------------------- single files


@pytest.mark.parametrize("storage", [DType.BF16, DType.FP8], ids=["bf16", "fp8"])
def test_diffusers_naming_single_file(tmp_path, tiny_state, storage):
    path = tmp_path / "flux.safetensors"
    save(stored(tiny_state, storage), path)
    report = inspect_checkpoint(path)
    assert report.family == "flux"
    assert report.naming is Naming.DIFFUSERS
    assert report.files == (path,)
    assert_matches_inventory(report, storage)
    expected_dtypes = ("bf16",) if storage is DType.BF16 else ("bf16", "fp8")
    assert all(b.dtypes == expected_dtypes for b in report.blocks)
    model = build_tiny_flux()
    for block in report.blocks:
        assert block.tensors == len(model.get_submodule(block.name).state_dict())
    assert report.total_tensors == len(tiny_state)
    assert report.non_block_tensors == 20


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."], ids=["bare", "comfyui"])
@pytest.mark.parametrize("storage", [DType.BF16, DType.FP8], ids=["bf16", "fp8"])
def test_original_naming_single_file(tmp_path, tiny_state, storage, prefix):
    path = tmp_path / "flux1-original.safetensors"
    save(original_naming(stored(tiny_state, storage), prefix), path)
    report = inspect_checkpoint(path)
    assert report.family == "flux"
    assert report.naming is Naming.ORIGINAL
    assert_matches_inventory(report, storage)


def test_fp8_e5m2_and_unmapped_tags_are_reported(tmp_path, tiny_state):
    import torch

    state = stored(tiny_state, DType.FP8_E5M2)
    state["extra_counter"] = torch.zeros(3, dtype=torch.int32)
    path = tmp_path / "e5m2.safetensors"
    save(state, path)
    report = inspect_checkpoint(path)
    assert report.blocks[0].dtypes == ("bf16", "fp8_e5m2")
    assert report.non_block_bytes_by_dtype["I32"] == 12


def test_mixed_naming_is_reported_as_mixed(tmp_path, tiny_state):
    state = stored(tiny_state, DType.BF16)
    renamed = {
        n.replace("single_transformer_blocks.", "single_blocks."): t for n, t in state.items()
    }
    path = tmp_path / "mixed.safetensors"
    save(renamed, path)
    report = inspect_checkpoint(path)
    assert report.naming is Naming.MIXED
    assert_matches_inventory(report, DType.BF16)


# ---------------------------------------------------------------- diffusers folders


def save_sharded(state: dict, folder, shards: int = 3) -> dict:
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        shard = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[i::shards]}
        save(part, folder / shard)
        weight_map.update({n: shard for n in part})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    return weight_map


def test_sharded_diffusers_folder(tmp_path, tiny_state):
    folder = tmp_path / "transformer"
    save_sharded(stored(tiny_state, DType.BF16), folder)
    report = inspect_checkpoint(folder)
    assert len(report.files) == 3
    assert report.naming is Naming.DIFFUSERS
    assert_matches_inventory(report, DType.BF16)
    by_index = inspect_checkpoint(folder / "diffusion_pytorch_model.safetensors.index.json")
    assert by_index.blocks == report.blocks


def test_model_folder_and_pipeline_folder(tmp_path, tiny_state):
    pipeline = tmp_path / "FLUX.1-tiny"
    weights = pipeline / "transformer" / "diffusion_pytorch_model.safetensors"
    save(stored(tiny_state, DType.FP8), weights)
    (pipeline / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    (pipeline / "vae").mkdir()
    for path in (pipeline, pipeline / "transformer"):
        report = inspect_checkpoint(path)
        assert report.files == (weights,)
        assert_matches_inventory(report, DType.FP8)


def write_index(folder, weight_map) -> None:
    index = {"weight_map": weight_map} if weight_map is not None else {"metadata": {}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


@pytest.fixture
def sharded(tmp_path, tiny_state):
    folder = tmp_path / "transformer"
    weight_map = save_sharded(stored(tiny_state, DType.BF16), folder, shards=2)
    return folder, weight_map


def refused(path, *words: str) -> str:
    with pytest.raises(CheckpointError) as info:
        inspect_checkpoint(path)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    return message


def test_index_listing_a_tensor_in_the_wrong_shard(sharded):
    folder, weight_map = sharded
    name = "transformer_blocks.0.attn.to_q.weight"
    other = next(s for s in set(weight_map.values()) if s != weight_map[name])
    write_index(folder, {**weight_map, name: other})
    refused(folder, repr(name), f"lists it in {other}")


def test_index_listing_a_tensor_no_shard_holds(sharded):
    folder, weight_map = sharded
    shard = next(iter(weight_map.values()))
    write_index(folder, {**weight_map, "transformer_blocks.9.ghost.weight": shard})
    refused(folder, "'transformer_blocks.9.ghost.weight'", "does not hold it")


def test_shard_holding_a_tensor_the_index_omits(sharded):
    folder, weight_map = sharded
    name = "proj_out.weight"
    write_index(folder, {k: v for k, v in weight_map.items() if k != name})
    refused(folder, repr(name), "does not list it")


def test_tensor_in_two_shards(sharded, tiny_state):
    folder, weight_map = sharded
    name = "x_embedder.bias"
    extra = "diffusion_pytorch_model-extra.safetensors"
    save({name: tiny_state[name]}, folder / extra)
    write_index(folder, {**weight_map, "__extra__": extra})
    refused(folder, repr(name), "is in both")


def test_index_naming_a_missing_shard(sharded):
    folder, weight_map = sharded
    shard = next(iter(weight_map.values()))
    (folder / shard).unlink()
    refused(folder, shard, "missing")


@pytest.mark.parametrize("bad", ["../outside.safetensors", "/etc/passwd", "", 7])
def test_index_shard_names_must_be_files_in_the_folder(sharded, bad):
    folder, weight_map = sharded
    write_index(folder, {**weight_map, "proj_out.weight": bad})
    refused(folder, "'proj_out.weight'", "not a file name in its folder")


@pytest.mark.parametrize("content", ["{not json", "[1]", '{"metadata": {}}', '{"weight_map": {}}'])
def test_broken_index(sharded, content):
    folder, _ = sharded
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(content)
    refused(folder, "diffusion_pytorch_model.safetensors.index.json")


def test_index_naming_a_tensor_twice(sharded):
    folder, weight_map = sharded
    text = json.dumps({"weight_map": weight_map})
    name = "proj_out.weight"
    text = text.replace(f'"{name}": ', f'"{name}": "{weight_map[name]}", "{name}": ', 1)
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(text)
    refused(folder, repr(name), "twice")


def test_malformed_shard_names_the_shard(sharded):
    folder, weight_map = sharded
    shard = sorted(set(weight_map.values()))[0]
    (folder / shard).write_bytes(b"\x00" * 4)
    refused(folder, shard, "too short")


# ---------------------------------------------------------------- what is not a checkpoint


def test_missing_path(tmp_path):
    refused(tmp_path / "nope.safetensors", "does not exist")


def test_pickle_file_is_not_read(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"\x80\x04")
    refused(path, "not a .safetensors file")


def test_folder_without_weights(tmp_path):
    (tmp_path / "vae").mkdir()
    refused(tmp_path, "holds neither", "diffusion_pytorch_model.safetensors")


def test_file_with_no_block_tensors(tmp_path):
    import torch

    path = tmp_path / "vae.safetensors"
    save({"encoder.conv_in.weight": torch.zeros(4, 3)}, path)
    refused(path, str(path), "no tensor", "flux")


# ---------------------------------------------------------------- a FLUX.1-dev sized file


@pytest.fixture(scope="module")
def flux_dev_sparse(tmp_path_factory):
    """A valid 23.8 GB FLUX.1-dev bf16 header in diffusers naming over a sparse data region."""
    from runtime.catalog import get_model
    from runtime.families import get_family

    model = get_family("flux").build(get_model("flux-dev").config, "meta")
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, tensor in model.state_dict().items():
        size = tensor.numel() * 2
        header[name] = {
            "dtype": "BF16", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]
        }
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path_factory.mktemp("flux-dev") / "flux1-dev.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    os.truncate(path, 8 + len(raw) + offset)
    return path


def test_flux_dev_sized_file_answers_at_once(flux_dev_sparse):
    assert flux_dev_sparse.stat().st_size > 23 * 10**9
    inspect_checkpoint(flux_dev_sparse)  # warm the family registry import
    start = time.perf_counter()
    report = inspect_checkpoint(flux_dev_sparse)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"inspect took {elapsed:.3f} s"

    inv = inventory("flux-dev")
    assert [b.name for b in report.blocks] == [b.name for b in inv.blocks]
    assert [b.bytes for b in report.blocks] == [b.bytes for b in inv.blocks]
    assert report.blocks[0].bytes == 679_662_592 and report.blocks[-1].bytes == 283_183_616
    assert report.non_block_bytes == inv.non_block_bytes
    assert report.total_bytes == inv.total_bytes == 23_802_816_640


# ---------------------------------------------------------------- the command line


def test_cli_table(tmp_path, tiny_state):
    path = tmp_path / "flux1-fp8.safetensors"
    save(original_naming(stored(tiny_state, DType.FP8), "model.diffusion_model."), path)
    result = CliRunner().invoke(app, ["models", "inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{path}: flux, original naming, 1 file\n")
    for name in TINY_ORDER:
        assert name in result.stdout
    assert "bf16, fp8" in result.stdout
    total = inspect_checkpoint(path).total_bytes
    assert f"{total:,}" in result.stdout


def test_cli_json(tmp_path, tiny_state):
    path = tmp_path / "flux.safetensors"
    save(stored(tiny_state, DType.BF16), path)
    result = CliRunner().invoke(app, ["models", "inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == inspect_checkpoint(path).to_dict()
    assert data["naming"] == "diffusers" and data["family"] == "flux"
    assert [b["name"] for b in data["blocks"]] == TINY_ORDER
    assert data["total"]["bytes"] == inventory("tiny-flux", DType.BF16).total_bytes


def test_cli_refuses_a_broken_file_in_one_line(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    result = CliRunner().invoke(app, ["models", "inspect", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and str(path) in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
