"""Per-block storage formats and pruned MLP units of a plan, applied to the model's blocks
before the engine places them, and undone by `remove()`.

A plan block with a `format` (fp8, q8_0, q4_k) has its tensors stored in that format as a
checkpoint would (`runtime.analysis.convert.pack_block`: packed quantized matrices, fp8
matrices), so the engine streams the smaller bytes and converts them where they are used,
exactly as it does for a quantized or fp8 checkpoint. A block with `pruned` units has the
weights of those MLP hidden units sliced away first (`runtime.analysis.pruning`). The original
parameters (the same tensor objects) and the Linear layers' widths are kept and put back.
"""

from __future__ import annotations

import torch

from runtime.analysis.convert import pack_block
from runtime.analysis.pruning import prune_units


class BlockConversions:
    """What converting the plan's blocks changed, to undo it."""

    def __init__(self) -> None:
        self.parameters: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
        self.widths: list[tuple[torch.nn.Linear, int, int]] = []
        self.converted: list[torch.nn.Module] = []  # the blocks converted, in order

    def undo(self) -> None:
        for module, leaf, original in reversed(self.parameters):
            module._parameters[leaf] = original
        for linear, in_features, out_features in reversed(self.widths):
            linear.in_features, linear.out_features = in_features, out_features
        self.parameters, self.widths, self.converted = [], [], []


def converts(plan) -> bool:
    return any(b.format is not None or b.pruned for b in plan.blocks)


def convert_blocks(blocks, plan) -> BlockConversions:
    """Each of `blocks` (`(name, kind, module)`) the plan gives a format or pruned units,
    converted in place; a failure half-way undoes what was done and re-raises."""
    by_name = {b.name: b for b in plan.blocks}
    done = BlockConversions()
    try:
        for name, _, module in blocks:
            planned = by_name[name]
            if planned.format is None and not planned.pruned:
                continue
            remember(done, module)
            for path, units in planned.pruned:
                prune_units(module, path, units)
            if planned.format is not None:
                pack_block(module, planned.format)
            done.converted.append(module)
    except BaseException:
        done.undo()
        raise
    return done


def remember(done: BlockConversions, block) -> None:
    """Keep `block`'s parameters and Linear widths in `done`, to be put back by `undo()`."""
    for module in block.modules():
        for leaf, param in module._parameters.items():
            if param is not None:
                done.parameters.append((module, leaf, param))
        if isinstance(module, torch.nn.Linear):
            done.widths.append((module, module.in_features, module.out_features))
