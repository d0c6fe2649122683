"""The node pack as ComfyUI runs it: loaded from its folder under another package name, the
apply node with each plan source, the tune node end to end, and their refusals.

ComfyUI comes from the pinned sdist (tests/comfy_fixtures.py); without it these tests skip.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from comfy_fixtures import comfyui, sample, tiny_flux_patcher
from runtime.dtypes import DType
from runtime.errors import UserError
from runtime.inventory import inventory
from runtime.plan import Predictions, Target, build_plan, save_plan
from runtime.workload import Workload

PACK = Path(__file__).resolve().parent.parent / "comfyui_nodes"


@pytest.fixture(scope="module")
def comfy():
    return comfyui()


@pytest.fixture(autouse=True)
def _nothing_loaded(comfy):
    comfy.model_management.unload_all_models()
    yield
    comfy.model_management.unload_all_models()


@pytest.fixture(scope="module")
def pack(comfy):
    """The pack imported the way ComfyUI imports a custom node folder (its own module name)."""
    name = "custom_nodes.offload-planner"
    spec = importlib.util.spec_from_file_location(
        name, PACK / "__init__.py", submodule_search_locations=[str(PACK)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


@pytest.fixture
def db_url(tmp_path, monkeypatch):
    """The nodes' store, given as ComfyUI users give it: the environment, never a widget."""
    url = f"sqlite:///{tmp_path / 'planner.db'}"
    monkeypatch.setenv("PLANNER_DB_URL", url)
    return url


@pytest.fixture
def plans_folder(comfy, tmp_path, monkeypatch):
    """ComfyUI's plans folder (models/plans), here a temporary one."""
    import folder_paths

    from comfyui_nodes.widgets import PLANS_FOLDER

    folder = tmp_path / "plans"
    folder.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, PLANS_FOLDER, ([str(folder)], {".json"}))
    return folder


def tiny_plan(streamed, step_ms: float = 10.0, gpu: str = "rtx-4060"):
    inv = inventory("tiny-flux", DType.FP32)
    return build_plan(
        inv, set(streamed), workload=Workload(height=32, width=32, text_tokens=16),
        target=Target(gpu, 1 << 30), prefetch_depth=1,
        predictions=Predictions(step_ms, 1 << 20, step_ms / 2),
    )


def _apply(pack, model, **inputs):
    node = pack.NODE_CLASS_MAPPINGS["OffloadPlanApply"]()
    out = getattr(node, node.FUNCTION)(model, **inputs)
    planned, text = out["result"]
    assert out["ui"]["text"] == [text]
    return planned, text


def _attachment(planned):
    from comfyui_nodes.patcher import attachment_of

    return attachment_of(planned)


def test_pack_declares_its_nodes_for_comfyui(pack):
    assert set(pack.NODE_CLASS_MAPPINGS) == {"OffloadPlanApply", "OffloadPlanTune"}
    assert pack.NODE_DISPLAY_NAME_MAPPINGS["OffloadPlanApply"] == "Offload plan: apply"
    for cls in pack.NODE_CLASS_MAPPINGS.values():
        types = cls.INPUT_TYPES()
        assert types["required"]["model"][0] == "MODEL"
        assert cls.RETURN_TYPES == ("MODEL", "STRING")
        assert callable(getattr(cls, cls.FUNCTION))
        # a model-patch node: an unconnected one does not run (and cannot abort the prompt)
        assert not getattr(cls, "OUTPUT_NODE", False)
        assert {"block swap", "lowvram", "offload"} <= set(cls.SEARCH_ALIASES)
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
        inputs = {**types["required"], **types.get("optional", {})}
        for name, spec in inputs.items():
            assert spec[1]["tooltip"], name
            assert "--" not in spec[1]["tooltip"], name  # no command-line flags in the UI
        # the store is never a widget: it would be saved into every workflow and PNG
        assert not {"db_url", "store", "database"} & set(inputs)


def test_dropdowns_offer_catalog_models_reference_gpus_and_plan_files(pack, plans_folder):
    (plans_folder / "flux-8gb.json").write_text("{}")
    (plans_folder / "notes.txt").write_text("not a plan")
    inputs = pack.NODE_CLASS_MAPPINGS["OffloadPlanApply"].INPUT_TYPES()["optional"]
    assert {"flux-dev", "tiny-flux", "wan2.2-t2v-a14b"} <= set(inputs["model_id"][0])
    assert inputs["gpu"][0][0] == "this machine's GPU" and "rtx-4060" in inputs["gpu"][0]
    assert inputs["plan_file"][0] == ["(none)", "flux-8gb.json"]
    assert inputs["cast"][0] == ["as planned", "pre", "auto"]


def test_apply_from_a_plan_file(pack, plans_folder):
    patcher = tiny_flux_patcher()
    plain = sample(patcher)
    save_plan(tiny_plan({"transformer_blocks.2", "single_transformer_blocks.4"}),
              plans_folder / "plan.json")
    planned, text = _apply(pack, patcher, source="plan file", plan_file="plan.json")
    assert "plan file: tiny-flux on rtx-4060, 2 of 8 blocks streamed" in text
    assert torch.equal(sample(planned), plain)
    assert _attachment(planned).last_stats.streamed_blocks == 2


def test_manual_overrides_run_and_are_shown_beside_the_plan(pack, plans_folder):
    patcher = tiny_flux_patcher()
    plain = sample(patcher)
    save_plan(tiny_plan({"transformer_blocks.2", "single_transformer_blocks.4"}),
              plans_folder / "plan.json")
    planned, text = _apply(
        pack, patcher, source="plan file", plan_file="plan.json",
        keep_on_gpu="double_blocks.0-2, single_blocks.0-1", cast="auto", prefetch_depth=2,
    )
    assert ("override: 5 of 8 blocks kept on the GPU, cast auto, prefetch depth 2; the plan "
            "chose 6 of 8 blocks kept on the GPU, cast pre, prefetch depth 1, predicted "
            "0.010 s/step") in text
    assert torch.equal(sample(planned), plain)
    stats = _attachment(planned).last_stats
    assert stats.streamed_blocks == 3 and stats.slots == 2
    with pytest.raises(UserError, match="names blocks this model does not have"):
        _apply(pack, patcher, source="plan file", plan_file="plan.json", keep_on_gpu="double_blocks.7")


def test_apply_by_stored_id_and_best_stored(pack, db_url):
    from db.store import open_store

    with open_store(db_url) as store:
        slow = store.save_plan(tiny_plan({"transformer_blocks.0"}, step_ms=30.0))
        fast = store.save_plan(tiny_plan({"single_transformer_blocks.1"}, step_ms=20.0))
        store.save_plan(tiny_plan({"transformer_blocks.1"}, step_ms=5.0, gpu="rtx-4090"))
    patcher = tiny_flux_patcher()
    planned, text = _apply(pack, patcher, source="stored plan id", plan_id=slow)
    assert text.startswith(f"plan {slow}: ")
    assert [b.name for b in _attachment(planned).plan.streamed] == ["double_blocks.0"]

    planned, text = _apply(
        pack, patcher, source="best stored plan", model_id="tiny-flux", vram_gb=1.0, gpu="rtx-4060",
    )
    assert text.startswith(f"plan {fast}: ")
    assert [b.name for b in _attachment(planned).plan.streamed] == ["single_blocks.1"]
    sample(planned)


def test_the_store_url_comes_from_comfyuis_user_directory(pack, comfy, tmp_path, monkeypatch):
    import json

    import folder_paths

    from db.store import open_store

    url = f"sqlite:///{tmp_path / 'from-config.db'}"
    with open_store(url) as store:
        plan_id = store.save_plan(tiny_plan({"transformer_blocks.0"}))
    monkeypatch.delenv("PLANNER_DB_URL", raising=False)
    monkeypatch.setattr(folder_paths, "get_user_directory", lambda: str(tmp_path))
    (tmp_path / "offload-planner.json").write_text(json.dumps({"db_url": url}))
    _, text = _apply(pack, tiny_flux_patcher(), source="stored plan id", plan_id=plan_id)
    assert text.startswith(f"plan {plan_id}: ")
    (tmp_path / "offload-planner.json").write_text("{not json")
    with pytest.raises(UserError, match="offload-planner.json is not a readable JSON file"):
        _apply(pack, tiny_flux_patcher(), source="stored plan id", plan_id=plan_id)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"source": "plan file", "plan_file": "(none)"}, "plan_file is not chosen"),
        ({"source": "plan file", "plan_file": "gone.json"}, "not in ComfyUI's models/plans folder"),
        ({"source": "somewhere"}, "is not a plan source"),
        ({"source": "stored plan id", "plan_id": 99}, "no plan 99"),
        ({"source": "best stored plan", "model_id": "tiny-flux", "vram_gb": 1.0},
         "this machine's GPU but it has no CUDA GPU"),
        ({"source": "best stored plan", "model_id": "tiny-flux", "vram_gb": 1.0, "gpu": "rtx-4060"},
         "no stored plan of tiny-flux fits 1GB on rtx-4060"),
        ({"source": "plan file", "plan_file": "plan.json", "cast": "later"}, "is not a cast mode"),
        ({"source": "plan file", "plan_file": "plan.json", "keep_on_gpu": "blocks 1 and 2"},
         "is not a block or range"),
    ],
)
def test_apply_refuses_bad_input_with_a_sentence(pack, db_url, plans_folder, inputs, message):
    save_plan(tiny_plan(set()), plans_folder / "plan.json")
    patcher = tiny_flux_patcher()
    with pytest.raises(UserError, match=message):
        _apply(pack, patcher, **inputs)
    assert patcher.get_attachment("offload_planner") is None


def test_tune_node_tunes_applies_measures_and_records(pack, db_url):
    from db.store import open_store

    patcher = tiny_flux_patcher()
    plain = sample(patcher)
    comfyui().model_management.unload_all_models()
    node = pack.NODE_CLASS_MAPPINGS["OffloadPlanTune"]()
    out = node.tune(
        patcher, 1.0, model_id="tiny-flux", width=32, height=32, gpu="rtx-4060", trials=20,
        measure_steps=2,
    )
    planned, text = out["result"]
    assert "predicted" in text and "measured" in text and "re-used" not in text
    attachment = _attachment(planned)
    assert attachment.applied == 1  # the measurement, whose packs the first prompt re-uses
    assert torch.equal(sample(planned), plain)
    assert attachment.applied == 1 and attachment.reused == 1
    with open_store(db_url) as store:
        (stored,) = store.list_plans(model="tiny-flux")
        # the measured run is kept, as a run on the CPU: it does not rank a plan for an rtx-4060
        assert stored.runs == 1 and stored.measured_runs == 0 and stored.best_measured_ms is None
    assert text.startswith(f"plan {stored.id}: ")

    # the same model, budget, image size and GPU again: the stored tune, not a new search
    again = node.tune(patcher, 1.0, model_id="tiny-flux", width=32, height=32, gpu="rtx-4060",
                      trials=20, measure_steps=0)["result"][1]
    assert again.startswith(f"plan {stored.id}: ") and again.endswith("(stored tune re-used)")
    with open_store(db_url) as store:
        assert len(store.list_plans(model="tiny-flux")) == 1


def test_tune_node_refuses_another_model_before_tuning(pack, db_url):
    from db.store import open_store

    with pytest.raises(UserError, match="the MODEL is not tiny-flux2: its 8 blocks hold"):
        pack.NODE_CLASS_MAPPINGS["OffloadPlanTune"]().tune(
            tiny_flux_patcher(), 1.0, model_id="tiny-flux2", gpu="rtx-4060",
        )
    with open_store(db_url) as store:
        assert store.list_plans() == []


def test_a_catalog_fp8_plan_on_comfyuis_all_fp8_weights_is_refused_with_the_fix(
        pack, comfy, plans_folder, db_url):
    patcher = tiny_flux_patcher()
    with torch.no_grad():
        for param in patcher.model.diffusion_model.parameters():
            param.data = param.data.to(torch.float8_e4m3fn)  # as weight_dtype fp8_e4m3fn loads it
    inv = inventory("tiny-flux", DType.FP8)  # the released fp8 checkpoint: vectors in bf16
    save_plan(build_plan(inv, set(), workload=Workload(height=32, width=32, text_tokens=16),
                         target=Target("rtx-4060", 1 << 30)), plans_folder / "plan.json")
    with pytest.raises(UserError, match="biases and norms in fp8 too .*'Offload plan: auto'"):
        _apply(pack, patcher, source="plan file", plan_file="plan.json")
    with pytest.raises(UserError, match="biases and norms in fp8 too .*'Offload plan: auto'"):
        pack.NODE_CLASS_MAPPINGS["OffloadPlanTune"]().tune(
            patcher, 1.0, model_id="tiny-flux", gpu="rtx-4060",
        )


def test_tune_node_refuses_a_model_of_mixed_dtypes(pack, db_url):
    patcher = tiny_flux_patcher()
    module = patcher.model.diffusion_model
    module.double_blocks[0].img_attn.qkv.weight.data = module.double_blocks[0].img_attn.qkv.weight.data.half()
    with pytest.raises(UserError, match="mix dtypes"):
        pack.NODE_CLASS_MAPPINGS["OffloadPlanTune"]().tune(
            patcher, 1.0, model_id="tiny-flux", gpu="rtx-4060",
        )


def test_example_workflow_wires_our_node_into_a_comfyui_flux_graph(pack, comfy):
    """The README's workflow: every node type is one ComfyUI (or this pack) defines, every link
    joins an output and an input of the same type, and our node's widget values are valid for
    its inputs, in their order."""
    import json
    import re

    from comfy_fixtures import comfyui_root

    workflow = json.loads((PACK / "example_workflows" / "flux_offload_plan.json").read_text())
    nodes = {n["id"]: n for n in workflow["nodes"]}
    ours = pack.NODE_CLASS_MAPPINGS
    root = comfyui_root()
    sources = (root / "nodes.py").read_text() + "".join(
        p.read_text() for p in (root / "comfy_extras").glob("nodes_*.py")
    )
    for node in nodes.values():
        defined = re.search(rf"^class {node['type']}\b", sources, re.MULTILINE)
        assert node["type"] in ours or defined, node["type"]
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        output = nodes[src]["outputs"][src_slot]
        assert output["type"] == kind and link_id in output["links"]
        assert nodes[dst]["inputs"][dst_slot] == {"name": nodes[dst]["inputs"][dst_slot]["name"], "type": kind, "link": link_id}
    (apply,) = [n for n in nodes.values() if n["type"] == "OffloadPlanApply"]
    types = ours["OffloadPlanApply"].INPUT_TYPES()
    widgets = {**types["required"], **types["optional"]}
    widgets.pop("model")
    assert len(apply["widgets_values"]) == len(widgets)
    for (name, spec), value in zip(widgets.items(), apply["widgets_values"]):
        kind = spec[0]
        if isinstance(kind, list):
            assert value in kind, name
        else:
            assert isinstance(value, {"STRING": str, "INT": int, "FLOAT": float}[kind]), name
    assert [i["type"] for i in apply["inputs"]] == ["MODEL"]
    assert [o["type"] for o in apply["outputs"]] == list(ours["OffloadPlanApply"].RETURN_TYPES)


def test_tune_node_takes_a_host_ram_budget(pack, db_url):
    """Issue 22: the tune node's host_ram is the whole run's limit; too little is refused."""
    from db.store import open_store

    with pytest.raises(UserError, match="no plan for tiny-flux fits .* of host RAM"):
        pack.NODE_CLASS_MAPPINGS["OffloadPlanTune"]().tune(
            tiny_flux_patcher(), 1.0, model_id="tiny-flux", gpu="rtx-4060", trials=10,
            host_ram_gb=0.001, measure_steps=0,
        )
    with open_store(db_url) as store:
        assert store.list_plans() == []
