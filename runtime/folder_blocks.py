"""The blocks generic discovery finds in a pipeline folder whose model has no family adapter,
component by component (denoisers, then text encoders), from configs and headers alone.

Each component is built on the `meta` device from its own config (no memory, no weights),
`runtime.discovery.find_blocks` names its blocks (declaration order: the execution order is
recorded at the first real forward), and the safetensors headers give each block's stored
bytes by dtype. The reports have the shape of `inspect_checkpoint`'s, family `auto`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType

from runtime.checkpoint.header import read_header
from runtime.checkpoint.inspect import BlockReport, CheckpointReport, Naming, _read_index
from runtime.checkpoint.stored import safetensors_tensors
from runtime.components import CODEC_WORDS, read_model_index
from runtime.discovery import AUTO_FAMILY, find_blocks
from runtime.errors import CheckpointError, UserError

_WEIGHTS = {"diffusers": "diffusion_pytorch_model.safetensors", "transformers": "model.safetensors"}


@dataclasses.dataclass(frozen=True)
class ComponentReport:
    component: str  # the pipeline attribute / subfolder, e.g. "transformer", "text_encoder"
    model_class: str
    role: str  # "denoiser" or "text encoder"
    report: CheckpointReport


def components_of(folder: Path) -> list[tuple[str, str, str, str]]:
    """(component, library, class, role) of the pipeline folder's denoisers, then its text
    encoders, as model_index.json lists them."""
    data = read_model_index(folder)
    found = []
    for name, entry in data.items():
        if name.startswith("_") or not (isinstance(entry, list) and len(entry) == 2):
            continue
        library, cls = entry
        if library == "diffusers" and isinstance(cls, str) and not any(w in cls for w in CODEC_WORDS) \
                and (Path(folder) / name / "config.json").is_file() and "Scheduler" not in cls:
            found.append((name, library, cls, "denoiser"))
        elif library == "transformers" and "text" in name and isinstance(cls, str):
            found.append((name, library, cls, "text encoder"))
    return sorted(found, key=lambda c: c[3] != "denoiser")


def denoiser_class(folder: Path) -> str | None:
    """The class of the pipeline folder's first denoiser, None where it has none."""
    found = [c for c in components_of(folder) if c[3] == "denoiser"]
    return found[0][2] if found else None


def without_adapter(path) -> bool:
    """Whether `path` is a pipeline folder whose denoiser's class no family adapter builds."""
    from runtime.families import families, get_family

    path = Path(path)
    if not (path / "model_index.json").is_file():
        return False
    cls = denoiser_class(path)
    return cls is not None and all(getattr(get_family(f), "diffusers_model", None) != cls for f in families())


def discovered_reports(folder: Path) -> list[ComponentReport]:
    """A report per denoiser and text encoder of the pipeline folder (see the module doc)."""
    folder = Path(folder)
    reports = []
    for name, library, cls, role in components_of(folder):
        model = _meta_model(folder / name, library, cls)
        reports.append(ComponentReport(name, cls, role, _report(folder / name, library, model)))
    if not reports:
        raise UserError(f"{folder} holds no denoiser nor text encoder to inspect: give a pipeline folder")
    return reports


def _meta_model(folder: Path, library: str, cls_name: str):
    """The component's architecture on `meta`, from its config alone."""
    import torch

    if library == "diffusers":
        import diffusers

        cls = getattr(diffusers, cls_name, None)
        if cls is None:
            raise UserError(f"{folder}: diffusers {diffusers.__version__} has no {cls_name}: update diffusers")
        with torch.device("meta"):
            return cls.from_config(cls.load_config(folder))
    import transformers

    cls = getattr(transformers, cls_name, None)
    if cls is None:
        raise UserError(f"{folder}: transformers {transformers.__version__} has no {cls_name}: update transformers")
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    with torch.device("meta"):
        return cls._from_config(config)


def _headers(folder: Path, library: str):
    single = folder / _WEIGHTS[library]
    if single.is_file():
        return [read_header(single)]
    index = folder / (_WEIGHTS[library] + ".index.json")
    if index.is_file():
        return _read_index(index)
    raise CheckpointError(f"{folder} holds neither {single.name} nor {index.name}: restore the pipeline folder")


def _report(folder: Path, library: str, model) -> CheckpointReport:
    headers = _headers(folder, library)
    _, tensors = safetensors_tensors(headers)
    try:
        found = find_blocks(model).blocks
    except UserError:  # nothing repeated to stream: the component runs whole
        found = ()
    names = [b.name for b in found]
    per_block: dict[str, list] = {name: [0, {}] for name in names}
    rest_count, rest_bytes = 0, {}
    for tensor in tensors:
        block = next((n for n in names if tensor.name.startswith(n + ".")
                      or f".{n}." in f".{tensor.name}"), None)
        if block is None:
            rest_count += 1
            rest_bytes[tensor.storage] = rest_bytes.get(tensor.storage, 0) + tensor.nbytes
            continue
        entry = per_block[block]
        entry[0] += 1
        entry[1][tensor.storage] = entry[1].get(tensor.storage, 0) + tensor.nbytes
    blocks = tuple(
        BlockReport(name=b.name, kind=b.kind, index=i, tensors=per_block[b.name][0],
                    bytes_by_dtype=MappingProxyType(per_block[b.name][1]))
        for i, b in enumerate(found)
    )
    return CheckpointReport(folder, tuple(h.path for h in headers), AUTO_FAMILY, Naming.DIFFUSERS,
                            blocks, rest_count, MappingProxyType(rest_bytes))
