"""Where a block's MLP hidden units are: the input columns of the Linear layers that read them.

An MLP writes its hidden units with one or more "up" projections (a gated MLP with two),
applies its activation, and reads them back with one "down" projection; the down projection's
input is the hidden units after the activation. Found from the role registry, for any block:
a Linear whose whole weight is MLP and whose input is wider than its output is a down
projection (every MLP here widens, 2.7x to 4x); a Linear whose input columns are split between
roles (FLUX's single-block `proj_out` reading `[attention | mlp]`) reads the hidden units in its
MLP columns.
"""

from __future__ import annotations

import dataclasses

from runtime.analysis.roles import ColumnSplit, Role, roles_of_tensor


@dataclasses.dataclass(frozen=True)
class MlpSite:
    """The hidden units of one MLP: input columns `start:stop` of the Linear at `path`."""

    path: str  # the down projection's module path inside the block
    start: int
    stop: int

    @property
    def units(self) -> int:
        return self.stop - self.start


def mlp_sites(block) -> tuple[MlpSite, ...]:
    """Every MLP of `block` (a double block has two: the image and the text stream's)."""
    import torch

    sites = []
    for path, module in block.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        parts = roles_of_tensor(block, path, "weight", module.weight)
        if isinstance(parts, ColumnSplit):
            sites += [MlpSite(path, start, stop) for role, start, stop in parts.columns
                      if role is Role.MLP]
        elif all(role is Role.MLP for role, _ in parts) and module.in_features > module.out_features:
            sites.append(MlpSite(path, 0, module.in_features))
    return tuple(sites)
