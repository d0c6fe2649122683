"""What `planner apply` checks between the plan and the files before any weight is read.

From the plan, the catalog, the folder's `model_index.json` and config files, the single files'
and LoRA files' headers: the plan runs on its catalog model (db/plan_check.py, every expert's
placement included), the workload is one the pipeline runs, the folder holds that model's
pipeline (its denoiser's class and config, built on `meta`, have the plan's blocks), no
component is custom code or only a pickle, a `--transformer` file stores what the plan says,
and each `--lora` is a LoRA. Each refusal is one sentence naming the file and the fix; nothing
here loads a tensor.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from runtime.errors import UserError

MAX_CONFIG_BYTES = 1 << 20
LIBRARIES = ("diffusers", "transformers")  # model_index.json components we load; no custom code
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_LORA_MARKS = ("lora_a", "lora_b", "lora_down", "lora_up", "lora.down", "lora.up", ".alpha",
               "lokr_", "loha_", "hada_")


@dataclasses.dataclass(frozen=True)
class ApplyFiles:
    plan_file: Path
    weights: Path
    transformer: Path | None = None
    transformer_2: Path | None = None
    loras: tuple = ()  # runtime.lora.LoraSpec
    height: int | None = None
    width: int | None = None
    frames: int | None = None


def preflight(plan, files: ApplyFiles) -> None:
    """Refuse (UserError) whatever apply can see is wrong before it loads anything."""
    from db.plan_check import check_storable, is_catalog_model
    from runtime.catalog import get_model
    from runtime.families import get_family

    source = f"plan {files.plan_file}"
    if not is_catalog_model(plan.model.id):
        return  # a model the catalog lacks: apply's own checks say what it needs
    check_storable(plan, source=source)
    spec = get_model(plan.model.id)
    spec.check_workload(dataclasses.replace(
        plan.workload, height=files.height or plan.workload.height, width=files.width or plan.workload.width,
        frames=files.frames if files.frames is not None else plan.workload.frames,
    ))
    adapter = get_family(spec.family)
    index = model_index(files.weights)
    attrs = spec.experts.attrs if spec.experts is not None else (adapter.denoiser,)
    models = []
    for attr in attrs:
        part = plan.for_expert(attr) if spec.experts is not None else plan
        single = files.transformer if attr == attrs[0] else files.transformer_2
        models.append(_check_denoiser(part, files.weights, attr, adapter, single, source))
    check_components(files.weights, index, skip={attrs[0]} if files.transformer else set())
    for lora in files.loras:
        _check_lora(lora.path, adapter, models[0])


def read_json(path: Path, what: str) -> Any:
    """A small JSON file through the strict reader: one sentence for anything else."""
    from runtime.files import read_bounded
    from runtime.strict_json import StrictJsonError, loads_strict

    raw = read_bounded(path, MAX_CONFIG_BYTES, what)
    try:
        return loads_strict(raw.decode("utf-8"))
    except StrictJsonError as e:
        raise UserError(f"{what} {path} holds what a config may not ({e}): download or save it again") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UserError(f"{what} {path} is not JSON: download or save the pipeline again") from None


def model_index(weights: Path) -> dict:
    index = read_json(weights / "model_index.json", "--weights")
    if type(index) is not dict or type(index.get("_class_name")) is not str:
        raise UserError(
            f"--weights {weights / 'model_index.json'} is not a diffusers model index (an object "
            f"naming its _class_name): download or save the pipeline again"
        )
    return index


def check_components(weights: Path, index: dict, skip: set[str]) -> None:
    """Every component (a list: [library, class]) is null or of diffusers or transformers, and
    any with weights has safetensors ones (a pickle is never loaded). Scalars are the pipeline's
    own config values (Wan 2.2's `boundary_ratio`), not components."""
    for name, entry in index.items():
        if name.startswith("_") or type(entry) in (bool, int, float, str) or entry is None:
            continue
        if entry == [None, None]:
            continue
        if not (type(entry) is list and len(entry) == 2 and all(type(v) is str for v in entry)
                and entry[0] in LIBRARIES):
            raise UserError(
                f"--weights {weights}: model_index.json names {name} as {str(entry)[:60]}, code "
                f"outside {' and '.join(LIBRARIES)} that apply never runs: use the model's "
                f"diffusers pipeline folder"
            )
        folder = weights / name
        if name in skip or not folder.is_dir():
            continue
        files = [p for p in folder.iterdir() if p.is_file()]
        if any(p.suffix in PICKLES for p in files) and not any(p.name.endswith(".safetensors") for p in files):
            raise UserError(
                f"--weights {folder} holds its weights only as a pickle ({', '.join(sorted(p.name for p in files if p.suffix in PICKLES))[:80]}), "
                f"which apply never loads: save it with safe_serialization=True or download the .safetensors files"
            )


def _check_denoiser(plan, weights: Path, attr: str, adapter, single: Path | None, source: str):
    """The folder's `attr` config is the family's class and, built on meta, has the plan's
    blocks; a single file stores what the plan stores."""
    import torch

    from db.plan_check import check_blocks
    from runtime.analysis.mixed import plan_conversions, planned_inventory

    path = weights / attr / "config.json"
    config = read_json(path, "--weights")
    want = getattr(adapter, "diffusers_model", None)
    if type(config) is not dict or (want is not None and config.get("_class_name") != want):
        got = config.get("_class_name") if type(config) is dict else None
        raise UserError(
            f"--weights {weights} holds a {got or 'non-diffusers'} as {attr}, but {source} is for "
            f"{plan.model.id} ({want}): give that model's pipeline folder, or tune a plan for this one"
        )
    try:
        with torch.device("meta"):
            model = adapter.model_class().from_config(config)
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"--weights {path} is not a config {want} can be built from ({str(e)[:120]}): "
                        f"download or save the pipeline again") from None
    inv = planned_inventory(model, adapter, plan.model.id, plan.model.storage_dtype,
                            *plan_conversions(plan))  # blocks in their own format, pruned
    check_blocks(plan, inv, source, model=f"the {attr} of {weights}",
                 fix="give the folder of the plan's model, or tune a plan for this one")
    if single is not None:
        _check_single_file(plan, single, attr)
    return model


def _check_single_file(plan, path: Path, attr: str) -> None:
    from runtime.checkpoint.inspect import inspect_checkpoint

    option = "--transformer" if attr != "transformer_2" else "--transformer-2"
    report = inspect_checkpoint(path)
    if report.family != plan.model.family:
        raise UserError(
            f"{option} {path} holds a {report.family} transformer but the plan is for "
            f"{plan.model.id} ({plan.model.family}): give that model's file"
        )
    quantized = report.format.value in ("gguf", "nf4")
    if quantized != plan.model.storage_dtype.is_quantized:
        stored = report.format.value if quantized else "unquantized weights"
        raise UserError(
            f"{option} {path} stores {stored} but the plan is for {plan.model.storage_dtype.value} "
            f"storage: tune a plan for this file with `planner tune --model {plan.model.id} --weights {path}`"
        )


def _check_lora(path: Path, adapter, model) -> None:
    """A LoRA file: safetensors whose tensors are LoRA factors for the family's denoiser (in
    diffusers naming: of layers the `meta` model has)."""
    from runtime.checkpoint.header import read_header
    from runtime.errors import CheckpointError

    try:
        names = [t.name for t in read_header(path).tensors]
    except CheckpointError as e:
        raise UserError(f"--lora {path} is not a readable safetensors file ({e})") from None
    lora = [n for n in names if any(m in n.lower() for m in _LORA_MARKS)]
    if not lora:
        raise UserError(
            f"--lora {path} holds no LoRA factors (no lora_A/lora_B or lora_down/lora_up tensors): "
            f"it is not a LoRA; give a LoRA .safetensors made for this model"
        )
    prefix = f"{adapter.denoiser}."
    if not all(n.startswith(("transformer.", "unet.")) for n in lora):
        return  # original (kohya, BFL) naming: diffusers' loader converts and checks those
    layers = dict(model.named_modules())
    for name in (n for n in lora if ".lora" in n.lower()):
        target = name[len(prefix):].split(".lora", 1)[0] if name.startswith(prefix) else None
        if target not in layers:
            raise UserError(
                f"--lora {path} adapts {name.split('.lora', 1)[0][:80]!r}, a layer this "
                f"{model.__class__.__name__} does not have: it is made for another model; give "
                f"a LoRA made for this one"
            )
