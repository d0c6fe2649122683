"""Image-conditioned and edit variants through their real diffusers pipelines (tiny, CPU):
FLUX.1 Kontext appends the conditioning image's tokens, and the first step's profile counts
them; Wan image-to-video (36 input channels; Wan 2.1's with a CLIP image encoder) is a Wan
model to the adapter, no longer refused."""

from __future__ import annotations

from pathlib import Path

import torch
from typer.testing import CliRunner

from planner.cli import app
from tests.anymodel_fixtures import no_ftfy, save_image, save_pipeline


def _apply(folder: Path, tmp_path: Path, db: str, *extra: str):
    result = CliRunner().invoke(app, [
        "apply", "--weights", str(folder), "--vram", "4MB", "--prompt", "a cat", "--steps", "1",
        "--height", "64", "--width", "64", "-o", str(tmp_path / f"{folder.name}.png"),
        "--device", "cpu", "--db", db, *extra,
    ])
    assert result.exit_code == 0, result.output
    return result


def _profiles(db: str) -> dict:
    from db.store import open_store

    with open_store(db) as store:
        return {p.model_id: p for p in store.list_profiles()}


def test_kontext_image_tokens_are_in_the_measured_profile(tmp_path):
    db = f"sqlite:///{tmp_path / 'store.db'}"
    image = save_image(tmp_path / "ref.png")
    _apply(save_pipeline("flux", tmp_path / "flux"), tmp_path, db)
    plain = _profiles(db)
    _apply(save_pipeline("flux-kontext", tmp_path / "kontext"), tmp_path, db, "--image", str(image),
           # the tiny model at 64x64 (Kontext renders at max_area, its preferred sizes by default)
           "--pipeline-arg", "max_area=4096", "--pipeline-arg", "_auto_resize=false")
    kontext = {k: p for k, p in _profiles(db).items() if k not in plain}
    (flux_id, flux), = plain.items()
    (kontext_id, edit), = kontext.items()
    # one architecture, other inputs: its own key, and its blocks carry the image's 16 tokens
    assert flux_id.rsplit(":", 1)[0] == kontext_id.rsplit(":", 1)[0] and flux_id != kontext_id
    assert edit.activation_peak_bytes > flux.activation_peak_bytes
    assert [b.name for b in edit.blocks] == [b.name for b in flux.blocks]


def test_unknown_pipeline_argument_is_refused(tmp_path):
    folder = save_pipeline("flux", tmp_path / "flux")
    result = CliRunner().invoke(app, [
        "apply", "--weights", str(folder), "--vram", "4MB", "--prompt", "a cat",
        "--pipeline-arg", "not_an_argument=1", "-o", str(tmp_path / "x.png"), "--device", "cpu",
    ])
    assert result.exit_code != 0
    assert "--pipeline-arg not_an_argument is not an argument FluxPipeline takes" in result.output
    assert not (tmp_path / "x.png").exists()


def test_wan_21_image_to_video_with_its_clip_encoder(tmp_path, monkeypatch):
    from PIL import Image

    no_ftfy(monkeypatch)
    db = f"sqlite:///{tmp_path / 'store.db'}"
    folder = save_pipeline("wan-i2v-clip", tmp_path / "wan21-i2v")
    out = tmp_path / "clip.webp"
    result = CliRunner().invoke(app, [
        "apply", "--weights", str(folder), "--vram", "4MB", "--prompt", "a cat", "--steps", "1",
        "--height", "64", "--width", "64", "--frames", "5", "--image", str(save_image(tmp_path / "f.png")),
        "-o", str(out), "--device", "cpu", "--db", db,
    ])
    assert result.exit_code == 0, result.output
    with Image.open(out) as clip:
        assert clip.n_frames == 5
    (model_id, profile), = _profiles(db).items()
    assert model_id.startswith("auto:WanTransformer3DModel:")


def test_wan_adapter_takes_image_to_video_configs():
    from runtime.catalog import get_model
    from runtime.families import get_family
    from runtime.families.wan import IMAGE_TOKENS, context_tokens, latent_shape
    from runtime.workload import Workload

    adapter = get_family("wan")
    workload = Workload(height=64, width=64, frames=5, text_tokens=16)
    for extra in ({}, {"image_dim": 24, "added_kv_proj_dim": 32}):  # Wan 2.2 I2V, Wan 2.1 I2V
        config = dict(get_model("tiny-wan").config) | {"in_channels": 36, "out_channels": 16} | extra
        torch.manual_seed(0)
        model = adapter.build(config, device="cpu")
        assert latent_shape(model.config, workload) == (2, 8, 8)  # the noise's, as for text-to-video
        out = model(**adapter.model_inputs(model, workload, "cpu", torch.float32))[0]
        assert out.shape == (1, 16, 2, 8, 8)
        inputs = adapter.block_inputs(model, "block", workload, "cpu", torch.float32)
        assert inputs.kwargs["encoder_hidden_states"].shape[1] == 16 + (IMAGE_TOKENS if extra else 0)
        assert context_tokens(model.config, workload) == inputs.kwargs["encoder_hidden_states"].shape[1]
        model.blocks[0](*inputs.args, **inputs.kwargs)  # the block takes them
        meta = adapter.build(config, device="meta")  # the profiler's meta trace: no values read
        adapter.model_inputs(meta, workload, "meta", torch.float32)


def test_catalog_image_to_video_models_count_the_image_embedding():
    """Reference planning of the catalog's I2V models: Wan 2.1 I2V's blocks also attend to the
    257 image-embedding tokens, so each block costs more than text-to-video's at one workload,
    over the same video tokens; Wan 2.2 I2V A14B's 36 channels change neither."""
    from profiler.flops import model_trace
    from runtime.catalog import get_model

    workload = get_model("wan2.1-t2v-14b").workload("832x480", frames=1)
    t2v, i2v, a14b = (model_trace(m, workload) for m in
                      ("wan2.1-t2v-14b", "wan2.1-i2v-14b-480p", "wan2.2-i2v-a14b"))
    assert i2v.blocks[0].flops > t2v.blocks[0].flops
    assert a14b.blocks[0].flops == t2v.blocks[0].flops
    assert get_model("wan2.2-i2v-a14b").experts.boundary_ratio == 0.9


def test_a_catalog_plan_applies_to_a_wan_image_to_video_folder(tmp_path, monkeypatch):
    """`planner apply plan.json --image`: the folder's own WanImageToVideoPipeline is loaded
    (the family's variant), the plan applied to its 36-channel transformer."""
    from PIL import Image

    from runtime.catalog import get_model
    from runtime.inventory import inventory
    from runtime.plan import Predictions, Target, build_plan, save_plan

    no_ftfy(monkeypatch)
    folder = save_pipeline("wan-i2v", tmp_path / "wan-i2v")
    inv = inventory("tiny-wan-i2v")
    workload = get_model("tiny-wan-i2v").workload()
    plan = build_plan(inv, {b.name for b in inv.blocks[::2]}, workload=workload,
                      target=Target("cpu", 1 << 30), prefetch_depth=2,
                      predictions=Predictions(step_ms=5.0, peak_vram_bytes=1 << 20, lower_bound_ms=4.0))
    save_plan(plan, tmp_path / "plan.json")
    out = tmp_path / "clip.webp"
    args = ["apply", str(tmp_path / "plan.json"), "--weights", str(folder), "--prompt", "a cat",
            "--steps", "1", "-o", str(out), "--device", "cpu", "--db", f"sqlite:///{tmp_path / 's.db'}"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code != 0 and "WanImageToVideoPipeline is conditioned on an image" in refused.output
    result = CliRunner().invoke(app, args + ["--image", str(save_image(tmp_path / "f.png"))])
    assert result.exit_code == 0, result.output
    with Image.open(out) as clip:
        assert clip.n_frames == 5 and clip.size == (64, 64)
