"""`planner apply --weights FOLDER --vram` and `planner models inspect FOLDER` on tiny pipeline
folders of classes no family adapter knows (Sana) and on image-conditioned variants (Wan
image-to-video, 36 input channels), built and saved here (CPU, nothing downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from planner.cli import app
from tests.anymodel_fixtures import no_ftfy, save_image, save_pipeline


@pytest.fixture(scope="module")
def sana(tmp_path_factory) -> Path:
    return save_pipeline("sana", tmp_path_factory.mktemp("pipe") / "sana")


@pytest.fixture(scope="module")
def wan_i2v(tmp_path_factory) -> Path:
    return save_pipeline("wan-i2v", tmp_path_factory.mktemp("pipe") / "wan-i2v")


def _sizes(folder: Path) -> dict[str, int]:
    from runtime.components import load_any_pipeline, module_bytes

    pipe = load_any_pipeline(folder)
    return {name: module_bytes(m) for name, m in pipe.components.items() if hasattr(m, "parameters")}


def _budget(folder: Path) -> int:
    """The VAE (on the device for the run) and the denoiser's bytes and a quarter: tiny
    models' activations and workspace weigh as much as their weights, and the tuned plan
    must fit beside them (how much streams is apply_auto's own tests' matter)."""
    sizes = _sizes(folder)
    return sizes["vae"] + sizes["transformer"] * 5 // 4


def _runs(db: str) -> list:
    from db.store import open_store

    with open_store(db) as store:
        return store.list_plans()


def _apply(folder: Path, out: Path, db: str, *extra: str):
    return CliRunner().invoke(app, [
        "apply", "--weights", str(folder), "--vram", str(_budget(folder)), "--prompt", "a cat",
        "--steps", "2", "-o", str(out), "--device", "cpu", "--db", db, *extra,
    ])


@pytest.mark.parametrize("name, size, cls, forwards", [
    ("sana", 32, "SanaTransformer2DModel", 2),  # runs 512x512 (its size bins), then resizes
    ("lumina2", 64, "Lumina2Transformer2DModel", 4),  # CFG as two forwards a step
])
def test_apply_a_pipeline_class_without_an_adapter(name, size, cls, forwards, sana, tmp_path):
    from PIL import Image

    from runtime.folder_blocks import without_adapter

    folder = sana if name == "sana" else save_pipeline(name, tmp_path / name)
    assert without_adapter(folder)  # the test is about a class nobody wrote an adapter for
    out, db = tmp_path / f"{name}.png", f"sqlite:///{tmp_path / 'store.db'}"
    result = _apply(folder, out, db, "--height", str(size), "--width", str(size), "--json")
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.size == (size, size)
    data = json.loads(result.stdout)
    transformer = next(c for c in data["components"] if c["name"] == "transformer")
    assert transformer["placement"] == "streamed" and transformer["source"] == "measured"
    assert len(transformer["forward_ms"]) == forwards
    assert data["encode_ms"] > 0
    runs = _runs(db)
    assert [p.runs for p in runs] == [1]  # the transformer's plan, one run
    assert runs[0].plan.model.id.startswith(f"auto:{cls}:")
    assert data["runs"][0]["plan_id"] == runs[0].id


def _frames(path: Path) -> list[bytes]:
    from PIL import Image, ImageSequence

    with Image.open(path) as clip:
        return [frame.convert("RGB").tobytes() for frame in ImageSequence.Iterator(clip)]


def test_apply_wan_image_to_video(wan_i2v, tmp_path, monkeypatch):
    """Recorded like any run; with a budget the umT5 encoder does not fit, it streams through
    the ring instead of running whole, and the clip is the same."""
    from PIL import Image

    no_ftfy(monkeypatch)
    db = f"sqlite:///{tmp_path / 'store.db'}"
    image = save_image(tmp_path / "first.png")
    args = ("--image", str(image), "--height", "64", "--width", "64", "--frames", "5", "--json")
    roomy = _apply(wan_i2v, tmp_path / "roomy.webp", db, *args)
    assert roomy.exit_code == 0, roomy.output
    with Image.open(tmp_path / "roomy.webp") as clip:
        assert clip.n_frames == 5 and clip.size == (64, 64)
    data = json.loads(roomy.stdout)
    assert data["pipeline"] == "WanImageToVideoPipeline"
    runs = _runs(db)
    assert [p.runs for p in runs] == [1]
    assert runs[0].plan.model.id.startswith("auto:WanTransformer3DModel:")
    assert runs[0].plan.model.family == "wan"  # the Wan adapter still names the blocks

    sizes = _sizes(wan_i2v)
    tight = CliRunner().invoke(app, [
        "apply", "--weights", str(wan_i2v), "--vram", str(sizes["vae"] + sizes["text_encoder"] * 3 // 4),
        "--prompt", "a cat", "--steps", "2", "-o", str(tmp_path / "tight.webp"), "--device", "cpu",
        "--db", db, *args,
    ])
    assert tight.exit_code == 0, tight.output
    encoder = next(c for c in json.loads(tight.stdout)["components"] if c["name"] == "text_encoder")
    assert encoder["placement"] == "streamed" and encoder["streamed_blocks"] == 2
    assert _frames(tmp_path / "tight.webp") == _frames(tmp_path / "roomy.webp")


def test_image_to_video_without_an_image_is_refused(wan_i2v, tmp_path):
    out = tmp_path / "clip.webp"
    result = _apply(wan_i2v, out, f"sqlite:///{tmp_path / 's.db'}", "--frames", "5")
    assert result.exit_code != 0
    assert "is conditioned on an image: give one with --image FILE" in result.output
    assert not out.exists()


def test_plan_and_vram_together_are_refused(sana, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    result = CliRunner().invoke(app, [
        "apply", str(plan), "--weights", str(sana), "--vram", "8GB", "--prompt", "a cat",
    ])
    assert result.exit_code != 0
    assert "give a plan" in result.output and "or --vram, not both" in result.output


def test_inspect_shows_the_blocks_discovery_finds(sana):
    result = CliRunner().invoke(app, ["models", "inspect", str(sana), "--json"])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.output)
    transformer = next(r for r in reports if r["component"] == "transformer")
    names = [b["name"] for b in transformer["blocks"]]
    assert [n for n in names if n.startswith("transformer_blocks.")] == \
        [f"transformer_blocks.{i}" for i in range(4)]
    assert {b["kind"] for b in transformer["blocks"] if b["name"].startswith("transformer_")} \
        == {"SanaTransformerBlock"}
    assert transformer["family"] == "auto" and transformer["role"] == "denoiser"
    assert all(b["bytes"] > 0 for b in transformer["blocks"])
    encoder = next(r for r in reports if r["component"] == "text_encoder")
    assert [b["name"] for b in encoder["blocks"]] == ["layers.0", "layers.1"]


def test_a_16_bit_load_stores_each_denoiser_in_one_dtype(wan_i2v):
    """diffusers keeps Wan's norms and modulation tables in fp32 in a bf16 load; plans store a
    model in one dtype, so the any-pipeline loader casts them, as the catalog path does."""
    import torch

    from runtime.components import load_any_pipeline

    pipe = load_any_pipeline(wan_i2v, torch.bfloat16)
    dtypes = {t.dtype for t in pipe.transformer.parameters()} | \
        {t.dtype for t in pipe.transformer.buffers() if t.is_floating_point()}
    assert dtypes == {torch.bfloat16}


def test_apply_wan_two_experts_plans_each_at_its_phase(tmp_path):
    """A saved Wan 2.2 A14B-style folder (two experts, boundary 0.5): each expert runs under
    apply_auto at its own phase and both runs are recorded; the second expert, of the same
    class, config and inputs, starts from the plan the first one's step stored."""
    folder = save_pipeline("wan-experts", tmp_path / "wan-experts")
    db = f"sqlite:///{tmp_path / 'store.db'}"
    sizes = _sizes(folder)
    result = CliRunner().invoke(app, [
        "apply", "--weights", str(folder), "--vram", str(sizes["vae"] + sizes["transformer"] * 5 // 4),
        "--prompt", "a cat", "--steps", "2", "--guidance", "1.0", "--height", "64", "--width", "64",
        "--frames", "5", "-o", str(tmp_path / "clip.webp"), "--device", "cpu", "--db", db, "--json",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    experts = [c for c in data["components"] if c["role"] == "denoiser"]
    assert [c["name"] for c in experts] == ["transformer", "transformer_2"]
    assert [len(c["forward_ms"]) for c in experts] == [1, 1]
    assert experts[0]["source"] == "measured" and experts[1]["source"] == "stored plan"
    assert len(data["runs"]) == 2
