"""Remove MLP hidden units from a block by slicing its weights (smaller packs, less compute).

Unit `j` of an MLP (`runtime.analysis.sites.MlpSite`) is input column `start + j` of the down
projection, and the output row(s) of the up projection(s) that make it: row `j` of a plain
up projection (`ff.net.0.proj` under GELU; FLUX's single-block `proj_mlp`; each of a SwiGLU's
separate `w1` and `w3`), rows `j` and `units + j` of one that makes a gated pair in one matrix
(GEGLU, FLUX.2's `linear_in`). The up projections are found beside the down projection: the
nearest enclosing module that holds Linear layers whose output is `units` or `2 x units` wide.
A removed unit then contributes exactly nothing, as if its column of the down projection were
zero: pruning N units equals the model with those rows and columns removed.
"""

from __future__ import annotations

from typing import Sequence

from runtime.analysis.sites import MlpSite, mlp_sites
from runtime.errors import UserError


def site_of(block, path: str) -> MlpSite:
    for site in mlp_sites(block):
        if site.path == path:
            return site
    known = ", ".join(s.path for s in mlp_sites(block)) or "none"
    raise UserError(f"{path!r} reads no MLP hidden units of this block (its MLPs: {known}): "
                    f"name one of those")


def producers(block, site: MlpSite) -> list[tuple[object, int]]:
    """(Linear, copies) for every up projection writing the site's units; copies is 1, or 2
    for a gated pair in one matrix."""
    import torch

    parts = site.path.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        scope = block.get_submodule(".".join(parts[:depth])) if depth else block
        down = block.get_submodule(site.path)
        found = [(m, m.out_features // site.units) for m in scope.modules()
                 if isinstance(m, torch.nn.Linear) and m is not down
                 and m.out_features in (site.units, 2 * site.units)]
        if found:
            return found
    raise UserError(f"the MLP read by {site.path} has no up projection this tool can slice: "
                    f"it cannot be pruned")


def prune_units(block, path: str, units: Sequence[int]) -> None:
    """Remove hidden units `units` (indices within the MLP read by `path`) from `block`."""
    import torch

    site = site_of(block, path)
    drop = sorted(set(int(u) for u in units))
    if not drop:
        return
    if drop[0] < 0 or drop[-1] >= site.units:
        raise UserError(f"unit {drop[-1] if drop[-1] >= site.units else drop[0]} is outside "
                        f"the {site.units} hidden units of {path}: give 0 to {site.units - 1}")
    if len(drop) == site.units:
        raise UserError(f"pruning all {site.units} units of {path} leaves no MLP: keep some")
    dropped = set(drop)
    keep = torch.tensor([u for u in range(site.units) if u not in dropped])
    ups = producers(block, site)
    down = block.get_submodule(site.path)
    columns = torch.cat([torch.arange(site.start), site.start + keep,
                         torch.arange(site.stop, down.in_features)])
    _set(down, "weight", down.weight.data[:, columns])
    down.in_features = len(columns)
    for up, copies in ups:
        rows = torch.cat([copy * site.units + keep for copy in range(copies)])
        _set(up, "weight", up.weight.data[rows])
        if up.bias is not None:
            _set(up, "bias", up.bias.data[rows])
        up.out_features = len(rows)


def _set(module, leaf: str, data) -> None:
    import torch

    module._parameters[leaf] = torch.nn.Parameter(data.contiguous(), requires_grad=False)
