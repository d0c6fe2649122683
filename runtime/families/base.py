"""The contract a model family adapter fulfils.

An adapter knows one architecture: where its block lists are, how to build it from a config
(on the `meta` device for exact bytes without weights), how checkpoint tensor names map to
blocks, how to make representative inputs for one block and for the whole model at a workload,
and how its diffusers pipeline is driven (encode the prompt, denoise to latents, decode).
Everything downstream (catalog, inventory, inspect, profiler, planner, runtime) asks the
adapter and never names a family.

Two rules every adapter keeps, because the profiler relies on them:
- `model_inputs(model, workload, "meta", dtype)` works on a model built on `meta`: one
  whole-model forward on `meta` is how FLOPs and activation peaks are counted
  (`profiler.meta_trace`), so the forward must not read tensor values.
- Block lists are named in execution order (`block_lists`), and `blocks()` yields every block
  exactly once in the order the forward runs them.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from runtime.workload import Workload

if TYPE_CHECKING:
    from runtime.model_spec import ModelSpec


# The prefixes a single-file checkpoint's tensor names may carry: ComfyUI's, the original
# release's, a pipeline-level diffusers file's.
CHECKPOINT_PREFIX = r"^(?:model\.diffusion_model\.|diffusion_model\.|transformer\.)?"


def block_pattern(lists: Iterable[str]) -> re.Pattern:
    """A checkpoint tensor of a block of one of `lists` (block list names as files spell them),
    under any CHECKPOINT_PREFIX; groups: the list name, the block index."""
    alternatives = "|".join(re.escape(name) for name in lists)
    return re.compile(CHECKPOINT_PREFIX + "(" + alternatives + r")\.(\d+)\.")


def block_of(pattern: re.Pattern, name: str, lists: Mapping[str, str] | None = None) -> str | None:
    """The block (diffusers path) of a tensor matched by `pattern` (`block_pattern`), its list
    renamed by `lists` (file name -> diffusers name) where given; None for another tensor."""
    match = pattern.match(name)
    if not match:
        return None
    listed = match.group(1)
    return f"{(lists or {}).get(listed, listed)}.{int(match.group(2))}"


@dataclasses.dataclass(frozen=True)
class BlockList:
    """One list of repeated blocks: its attribute path on the model and the kind it holds."""

    attr: str  # e.g. "transformer_blocks"
    kind: str  # e.g. "double"
    single: bool = False  # one module, not a list (a UNet's `mid_block`), named by `attr` alone
    # Each block a kind of its own, `kind` + index ("down0", "down1"): for lists whose blocks
    # differ in shape and inputs (a UNet's down and up blocks), as `block_inputs` is per kind.
    kind_per_block: bool = False

    def block_name(self, index: int) -> str:
        return self.attr if self.single else f"{self.attr}.{index}"

    def block_kind(self, index: int) -> str:
        return f"{self.kind}{index}" if self.kind_per_block else self.kind


def block_position(block_lists: tuple[BlockList, ...], name: str) -> tuple[tuple[int, int], str]:
    """((list position, index), kind) of the block `name` (as `blocks()` names it): the order
    and kind of a block known only by name (a checkpoint's tensors)."""
    for position, block_list in enumerate(block_lists):
        if block_list.single and name == block_list.attr:
            return (position, 0), block_list.block_kind(0)
        attr, _, index = name.rpartition(".")
        if not block_list.single and attr == block_list.attr and index.isdigit():
            return (position, int(index)), block_list.block_kind(int(index))
    raise KeyError(name)


@dataclasses.dataclass(frozen=True)
class BlockInputs:
    """Positional and keyword arguments for one block's forward."""

    args: tuple
    kwargs: Mapping[str, Any]


class FamilyAdapter(abc.ABC):
    """One model family. Subclasses are registered in `runtime.families._BUILTIN`."""

    name: str  # registry key, e.g. "flux"
    diffusers_model: str  # the transformer's diffusers class, e.g. "FluxTransformer2DModel"
    diffusers_pipeline: str  # the pipeline class `planner apply` loads, e.g. "FluxPipeline"
    block_lists: tuple[BlockList, ...]
    # Pipeline attributes holding text encoders: run once for the prompt, then dropped.
    text_encoders: tuple[str, ...] = ()
    # The pipeline attribute (and pipeline subfolder) holding the model plans apply to.
    denoiser: str = "transformer"
    # Further pipeline classes of this family's models (image-conditioned variants) that
    # `planner apply` loads a folder with when its model_index.json names one of them.
    variant_pipelines: tuple[str, ...] = ()

    # The catalog entries of this family (released configs, source named, and a tiny-*).
    catalog: tuple["ModelSpec", ...] = ()

    # ------------------------------------------------------------------ architecture

    def models(self) -> tuple["ModelSpec", ...]:
        return self.catalog

    def model_class(self) -> type:
        """The torch module class this family's transformer is: `diffusers_model`, the name
        of a diffusers class (a family outside diffusers overrides this)."""
        import diffusers

        return getattr(diffusers, self.diffusers_model)

    def check_workload(self, config: Mapping[str, Any], workload: Workload) -> None:
        """Refuse (UserError) a workload this model's pipeline would round, refuse or fail on;
        a family whose pipeline takes any multiple of 16 keeps this default."""

    def build(self, config: Mapping[str, Any], device: str = "meta", dtype=None):
        """The architecture from a config; on `meta` it holds no memory."""
        import torch

        with torch.device(device):
            model = self.model_class()(**dict(config))
        if dtype is not None:
            model = torch.nn.Module.to(model, dtype)
        return model.eval()

    @abc.abstractmethod
    def block_of_tensor(self, tensor_name: str) -> str | None:
        """The block (diffusers module path, e.g. `transformer_blocks.3`) a checkpoint tensor
        belongs to, for every naming this family's checkpoints use; None for non-block tensors."""

    def claims(self, tensor_names: Sequence[str]) -> int:
        """How many tensors of a checkpoint (all its names) this family claims: `inspect` takes
        the family that claims the most. By default its block tensors. A family whose block
        names another family's also match overrides this to tell its files apart, e.g. by a
        tensor only it has (a file holding it is claimed whole: `len(tensor_names)`)."""
        return sum(1 for name in tensor_names if self.block_of_tensor(name) is not None)

    @abc.abstractmethod
    def block_inputs(self, model, kind: str, workload: Workload, device, dtype) -> BlockInputs:
        """Representative inputs for one block of `kind` at `workload` (random values), made
        the way the family's own forward makes them (rotary embeddings, modulation, masks)."""

    @abc.abstractmethod
    def model_inputs(self, model, workload: Workload, device, dtype) -> dict[str, Any]:
        """Keyword arguments for one whole-model forward at `workload` (random latents and
        text states, a mid-schedule timestep), returning a tuple (`return_dict=False`).
        Must work with `device="meta"` (see the module docstring)."""

    def is_original_name(self, tensor_name: str, block: str) -> bool | None:
        """Whether a tensor of `block` is spelled in the original naming (True), the diffusers
        one (False), or alike in both (None: it does not tell the file's naming). By default
        diffusers names are module paths holding the block's path and original names do not;
        families whose original names share the block paths say it by the rest of the name."""
        return not (tensor_name.startswith(block + ".") or f".{block}." in tensor_name)

    def convert_original(self, state: dict, shapes: Mapping[str, tuple]) -> dict:
        """Tensors of a checkpoint in the original release's naming (prefix already stripped),
        under diffusers module names. Pops what it maps out of `state`, so what is left is
        unknown; raises KeyError for a missing tensor. Families without such a naming keep
        this default."""
        raise NotImplementedError

    def recognises(self, module) -> bool:
        return isinstance(module, self.model_class())

    def blocks(self, model) -> list[tuple[str, str, Any]]:
        """(name, kind, module) for every block, in execution order."""
        found = []
        for block_list in self.block_lists:
            container = model.get_submodule(block_list.attr)
            for index, block in enumerate([container] if block_list.single else container):
                found.append((block_list.block_name(index), block_list.block_kind(index), block))
        return found

    # ------------------------------------------------------------------ generation

    def pipeline_class(self) -> type:
        """The diffusers pipeline class `planner apply` loads from a local folder:
        `diffusers_pipeline`, the name of a diffusers class."""
        import diffusers

        return getattr(diffusers, self.diffusers_pipeline)

    @abc.abstractmethod
    def prompt_kwargs(self, pipe, prompt: str, workload: Workload, guidance: float, device) -> dict:
        """Encode `prompt` with the pipeline's text encoders (already on `device`) and return
        the keyword arguments for `pipe(...)` that replace the prompt (embeddings, masks,
        negative embeddings for true CFG, the guidance argument under this pipeline's name,
        frames for video). `runtime.generate` adds steps, size, generator and
        `output_type="latent"`, and drops the text encoders afterwards."""

    def second_guidance_kwargs(self, pipe, guidance_2: float) -> dict:
        """The keyword arguments for `pipe(...)` that set the guidance of a later expert's
        steps (Wan 2.2 A14B's `guidance_scale_2`); {} where the pipeline has one transformer."""
        return {}

    @abc.abstractmethod
    def decode(self, pipe, latents, workload: Workload) -> list:
        """The pipeline's latents as PIL images: one for an image model, every frame for video."""


def block_tensor_names(spec, key: str, make) -> frozenset[str]:
    """The tensor names of the block `make()` builds (on `meta`; names do not depend on
    widths), derived once through the model cache under catalog model `spec` and `key`: a
    family that names a file's tensors by its blocks (`models inspect`) then imports neither
    torch nor diffusers."""
    from runtime.model_cache import cached

    def derive() -> dict:
        import torch

        with torch.device("meta"):
            return {"names": sorted(make().state_dict())}

    return frozenset(cached("block_tensor_names", spec, {"key": key}, derive)["names"])
