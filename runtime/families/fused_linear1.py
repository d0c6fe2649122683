"""The one conversion step diffusers' FLUX-style converters cannot do at every width.

FLUX.1, Chroma and HunyuanVideo single-stream blocks store q, k, v and the MLP input fused in
one `single_blocks.N.linear1` in their original files, and diffusers' converters split it at
rows sized for width 3072, so any other width (a pruned or test model) fails there. The
converter is given a `meta` stand-in of the shape it expects (no memory), and the real
`linear1` is split here at the sizes the model's own q, k, v and mlp layers have.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

LINEAR1 = re.compile(r"^single_blocks\.(\d+)\.linear1\.(weight|bias)$")
PARTS = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
ROWS_AT_3072 = 3 * 3072 + 4 * 3072  # what the converters hard-code


def convert_splitting_linear1(
    state: dict, shapes: Mapping[str, tuple], convert: Callable[[dict], dict],
    renames_in_place: bool = False,
) -> dict:
    """`convert(state)` with every `linear1` split at the model's sizes. Converters that pop
    what they map leave the unknown rest in `state`; one that renames in place
    (`renames_in_place`) maps everything it is given, so `state` is emptied."""
    import torch

    fused = {}
    for name in [n for n in state if LINEAR1.match(n)]:
        tensor = state.pop(name)
        fused[name] = tensor
        state[name] = torch.empty((ROWS_AT_3072, *tensor.shape[1:]), dtype=tensor.dtype,
                                  device="meta")
    converted = dict(convert(state))
    if renames_in_place:
        state.clear()
    for name, tensor in fused.items():
        index, kind = LINEAR1.match(name).groups()
        targets = [f"single_transformer_blocks.{index}.{part}.{kind}" for part in PARTS]
        if any(target not in shapes for target in targets):
            continue  # a block the model lacks: its stand-ins are refused as unknown names
        sizes = [shapes[target][0] for target in targets]
        if tensor.shape[0] != sum(sizes):
            raise RuntimeError(
                f"{name} has {tensor.shape[0]} rows but the model's q, k, v and mlp take "
                f"{sum(sizes)}"
            )
        converted.update(zip(targets, torch.split(tensor, sizes, dim=0)))
    return converted
