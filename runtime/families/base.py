"""The contract a model family adapter fulfils.

An adapter knows one architecture: where its block lists are, how to build it from a config
(on the `meta` device for exact bytes without weights), how checkpoint tensor names map to
blocks, and how to make representative inputs for one block at a workload. Everything
downstream (inventory, inspect, profiler, runtime) asks the adapter and never names a family.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Mapping

from runtime.workload import Workload


@dataclasses.dataclass(frozen=True)
class BlockList:
    """One list of repeated blocks: its attribute path on the model and the kind it holds."""

    attr: str  # e.g. "transformer_blocks"
    kind: str  # e.g. "double"


@dataclasses.dataclass(frozen=True)
class BlockInputs:
    """Positional and keyword arguments for one block's forward."""

    args: tuple
    kwargs: Mapping[str, Any]


class FamilyAdapter(abc.ABC):
    """One model family. Subclasses are registered with `runtime.families.register`."""

    name: str  # registry key, e.g. "flux"
    block_lists: tuple[BlockList, ...]

    @abc.abstractmethod
    def model_class(self) -> type:
        """The torch module class this family's transformer is (diffusers class)."""

    @abc.abstractmethod
    def build(self, config: Mapping[str, Any], device: str = "meta", dtype=None):
        """The architecture from a config; on `meta` it holds no memory."""

    @abc.abstractmethod
    def block_of_tensor(self, tensor_name: str) -> str | None:
        """The block (diffusers module path, e.g. `transformer_blocks.3`) a checkpoint tensor
        belongs to, for every naming this family's checkpoints use; None for non-block tensors."""

    @abc.abstractmethod
    def block_inputs(self, model, kind: str, workload: Workload, device, dtype) -> BlockInputs:
        """Representative inputs for one block of `kind` at `workload` (random values)."""

    @abc.abstractmethod
    def model_inputs(self, model, workload: Workload, device, dtype) -> dict[str, Any]:
        """Keyword arguments for one whole-model forward at `workload` (random latents and
        text states, a mid-schedule timestep), returning a tuple (`return_dict=False`)."""

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
            for index, block in enumerate(container):
                found.append((f"{block_list.attr}.{index}", block_list.kind, block))
        return found
