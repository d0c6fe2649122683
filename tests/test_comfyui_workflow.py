"""ComfyUI's own nodes around ours: FLUX loaded by UNETLoader with an fp8 `weight_dtype` under
a plan and under the auto node; ComfyUI's server driven over its HTTP API (POST /prompt,
/history, /interrupt) with the auto node in the workflow, writing a PNG through SaveImage whose
metadata holds no store URL.

ComfyUI comes from the pinned sdist (tests/comfy_fixtures.py); without it these tests skip.
"""

from __future__ import annotations

import pytest
import torch

from comfy_fixtures import TINY_UNET_CONFIG, comfy_nodes, sample, tiny_flux_patcher
from comfy_fixtures import comfy, isolated_comfy  # noqa: F401 (fixtures: ComfyUI, a private store)
from runtime.dtypes import DType
from runtime.plan import Target, build_plan
from runtime.workload import Workload


@pytest.fixture
def unet_file(comfy, tmp_path, monkeypatch):
    """The tiny FLUX as a diffusion model file in ComfyUI's diffusion_models folder. ComfyUI's
    model detection sizes FLUX by 128-wide heads, which a 32-wide model does not have: the
    detection (a seam) returns the tiny FLUX's own config; everything else is UNETLoader's."""
    import folder_paths
    import safetensors.torch

    import comfy.model_detection

    from comfyui_nodes.patcher import diffusion_model

    state = diffusion_model(tiny_flux_patcher()).state_dict()
    safetensors.torch.save_file(state, tmp_path / "tiny-flux.safetensors")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "diffusion_models",
                        ([str(tmp_path)], {".safetensors"}))
    monkeypatch.setattr(comfy.model_detection, "model_config_from_unet",
                        lambda sd, prefix, metadata=None: comfy.supported_models.Flux(dict(TINY_UNET_CONFIG)))
    return "tiny-flux.safetensors"


@pytest.mark.parametrize(("weight_dtype", "torch_dtype", "storage"), [
    ("fp8_e4m3fn", torch.float8_e4m3fn, DType.FP8),
    ("fp8_e4m3fn_fast", torch.float8_e4m3fn, DType.FP8),
    ("fp8_e5m2", torch.float8_e5m2, DType.FP8_E5M2),
])
def test_unetloader_fp8_weights_under_a_plan_equal_the_same_fp8_model(
        comfy, unet_file, weight_dtype, torch_dtype, storage):
    """The plan describes each tensor as ComfyUI stores it (biases and norm scales in fp8
    too); ComfyUI's manual-cast ops upcast per layer as without the plan."""
    from comfyui_nodes.patcher import attach_plan, diffusion_model
    from runtime.families import family_of_module
    from runtime.inventory import inventory_of_module

    (patcher,) = comfy_nodes().UNETLoader().load_unet(unet_file, weight_dtype)
    module = diffusion_model(patcher)
    assert {p.dtype for p in module.parameters()} == {torch_dtype}
    plain = sample(patcher)
    comfy.model_management.unload_all_models()

    inv = inventory_of_module(module, family_of_module(module), "tiny-flux", storage)
    assert inv.blocks[0].bytes_by_dtype == {storage.value: inv.blocks[0].bytes}
    plan = build_plan(inv, {"double_blocks.1", "single_blocks.0", "single_blocks.4"},
                      workload=Workload(height=32, width=32, text_tokens=16),
                      target=Target("cpu", 1 << 30), prefetch_depth=2)
    planned, attachment = attach_plan(patcher, plan)
    assert torch.equal(sample(planned), plain)
    assert attachment.last_stats.streamed_blocks == 3
    comfy.model_management.unload_all_models()
    assert {p.dtype for p in module.parameters()} == {torch_dtype}


def test_unetloader_fp8_weights_under_the_auto_node(comfy, unet_file):
    from comfyui_nodes.nodes import OffloadPlanAuto
    from comfyui_nodes.patcher import attachment_of, diffusion_model

    (patcher,) = comfy_nodes().UNETLoader().load_unet(unet_file, "fp8_e4m3fn")
    plain = sample(patcher)
    comfy.model_management.unload_all_models()
    weights = sum(p.numel() for p in diffusion_model(patcher).parameters())  # one byte each
    planned, _ = OffloadPlanAuto().auto(patcher, 0.9 * weights / 2**30)["result"]
    assert torch.equal(sample(planned), plain)
    assert torch.equal(sample(planned, seed=7), plain)
    handle = attachment_of(planned).handle
    assert handle.tuned and handle.plan.model.storage_dtype is DType.FP8


# ------------------------------------------------------------------ ComfyUI's HTTP API

SECRET_URL_PART = "planner-secret-store"


def _workflow(planned: bool, steps: int = 2, seed: int = 5) -> dict:
    model = ["2", 0] if planned else ["1", 0]
    return {
        "1": {"class_type": "TinyFluxLoader", "inputs": {}},
        "2": {"class_type": "OffloadPlanAuto", "inputs": {"model": ["1", 0], "vram_gb": 0.0006}},
        "3": {"class_type": "TinyFluxConditioning", "inputs": {}},
        "4": {"class_type": "TinyLatent", "inputs": {}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": model, "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["3", 0], "negative": ["3", 0],
            "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "LatentAsImage", "inputs": {"samples": ["5", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0],
                                                     "filename_prefix": "planned" if planned else "plain"}},
    }


class Server:
    """A ComfyUI server of the pinned sdist on 127.0.0.1, with this pack and the test nodes in
    its custom_nodes, stopped (and waited for) when the test ends."""

    def __init__(self, base, port: int, log) -> None:
        self.base, self.url, self.log = base, f"http://127.0.0.1:{port}", log

    def call(self, path: str, body: dict | None = None, timeout: float = 10.0):
        import json
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
        return json.loads(text) if text.strip() else None

    def run(self, prompt: dict, wait_s: float = 240.0, interrupt_after_s: float | None = None):
        """POST /prompt, then poll /history until it is done; its history entry. With
        `interrupt_after_s`, POST /interrupt that long after ComfyUI began executing it."""
        import time

        prompt_id = self.call("/prompt", {"prompt": prompt, "extra_data": {"extra_pnginfo": {
            "workflow": {"nodes": list(prompt)}}}})["prompt_id"]
        start = time.monotonic()
        interrupted = interrupt_after_s is None
        running_since = None
        while time.monotonic() - start < wait_s:
            if not interrupted and running_since is None and any(
                    item[1] == prompt_id for item in self.call("/queue")["queue_running"]):
                running_since = time.monotonic()
            if not interrupted and running_since is not None \
                    and time.monotonic() - running_since > interrupt_after_s:
                self.call("/interrupt", {})
                interrupted = True
            history = self.call(f"/history/{prompt_id}")
            if history and prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
                return history[prompt_id]
            time.sleep(0.2)
        raise AssertionError(f"prompt {prompt_id} did not finish in {wait_s} s")


@pytest.fixture
def server(comfy, tmp_path):
    import os
    import shutil
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    from pathlib import Path

    from comfy_fixtures import comfyui_root

    repo = Path(__file__).resolve().parent.parent
    base = tmp_path / "comfy"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "frontend").mkdir()
    os.symlink(repo / "comfyui_nodes", base / "custom_nodes" / "offload-planner")
    shutil.copy(repo / "tests" / "comfy_test_nodes.py", base / "custom_nodes" / "planner_test_nodes.py")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([str(repo), str(repo / "tests")]),
               PLANNER_DB_URL=f"sqlite:///{tmp_path / SECRET_URL_PART}.db")
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--base-directory", str(base), "--front-end-root", str(base / "frontend"),
         "--database-url", "sqlite:///:memory:", "--disable-auto-launch", "--disable-api-nodes"],
        cwd=comfyui_root(), env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    server = Server(base, port, tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                server.call("/object_info/OffloadPlanAuto", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("ComfyUI's server did not start:\n"
                                         + (tmp_path / "server.log").read_text()[-3000:])
                time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()


def _png(server, history, node: str = "7"):
    from PIL import Image

    (image,) = history["outputs"][node]["images"]
    return Image.open(server.base / "output" / image["subfolder"] / image["filename"])


def test_http_api_runs_the_auto_node_and_saves_no_store_url(server):
    import numpy as np

    info = server.call("/object_info/OffloadPlanAuto")["OffloadPlanAuto"]
    assert not info["output_node"] and "block swap" in info["search_aliases"]
    assert "/extensions/offload-planner/plan_text.js" in server.call("/extensions")

    plain = {}
    for seed in (5, 6, 7):
        done = server.run(_workflow(planned=False, seed=seed))
        assert done["status"]["status_str"] == "success", done["status"]["messages"][-1]
        plain[seed] = np.asarray(_png(server, done))
    first = server.run(_workflow(planned=True, seed=5))
    assert first["status"]["status_str"] == "success", first["status"]["messages"][-1]
    assert first["outputs"]["2"]["text"][0].startswith("auto: measured on the first sampling step")
    assert np.array_equal(np.asarray(_png(server, first)), plain[5])
    # the next prompt, a new seed: the model and its plan stay loaded, the packs are re-used
    second = server.run(_workflow(planned=True, seed=6))
    assert np.array_equal(np.asarray(_png(server, second)), plain[6])

    # a long prompt interrupted while sampling, then another: the plan undone and re-applied
    # (far more steps than can run before the interrupt: 400 once finished within 3 s)
    stopped = server.run(_workflow(planned=True, steps=10000, seed=9), interrupt_after_s=1.5)
    assert stopped["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in stopped["status"]["messages"])
    again = server.run(_workflow(planned=True, seed=7))
    assert np.array_equal(np.asarray(_png(server, again)), plain[7])
    # one line per completed sampling run in ComfyUI's log
    lines = [l for l in server.log.read_text().splitlines() if "offload-planner: " in l]
    assert len(lines) == 3 and all("blocks streamed" in l for l in lines)
    assert "packed in" in lines[0] and "packs re-used" in lines[1] and "packed in" in lines[2]

    # the workflow and prompt ComfyUI wrote into the PNG hold no store URL
    for history in (first, second, again):
        text = " ".join(str(v) for v in _png(server, history).text.values())
        assert "prompt" in _png(server, history).text
        assert SECRET_URL_PART not in text and "sqlite:" not in text and "db_url" not in text
