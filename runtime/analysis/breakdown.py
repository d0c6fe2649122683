"""A block's parameters and bytes split by role (`runtime.analysis.roles`).

Takes any module's blocks as `(name, kind, module)` (what `FamilyAdapter.blocks` and the
generic block path return), on any device, `meta` included; bytes are those of `storage`,
as the inventory counts them, so a block's roles add up to its inventory bytes exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Sequence

from runtime.analysis.roles import Group, Role, roles_of_tensor
from runtime.dtypes import DType, storage_dtype


@dataclasses.dataclass(frozen=True)
class RoleShare:
    params: int
    bytes: int


@dataclasses.dataclass(frozen=True)
class BlockBreakdown:
    """One block, or (`blocks` > 1) every block of one kind added up."""

    name: str  # the block's path; for a kind, the kind
    kind: str
    roles: Mapping[Role, RoleShare]  # only roles the block has, in `Role` order
    blocks: int = 1

    @property
    def params(self) -> int:
        return sum(share.params for share in self.roles.values())

    @property
    def bytes(self) -> int:
        return sum(share.bytes for share in self.roles.values())

    def group(self, group: Group) -> RoleShare:
        shares = [s for role, s in self.roles.items() if role.group is group]
        return RoleShare(sum(s.params for s in shares), sum(s.bytes for s in shares))

    def to_dict(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "blocks": self.blocks,
            "params": self.params, "bytes": self.bytes,
            "roles": {role.value: dataclasses.asdict(s) for role, s in self.roles.items()},
            "groups": {g.value: dataclasses.asdict(self.group(g)) for g in Group},
        }


def block_breakdown(name: str, kind: str, block, storage: DType) -> BlockBreakdown:
    """The roles of every parameter and buffer of `block`, stored as `storage`."""
    params: dict[Role, int] = {}
    num_bytes: dict[Role, int] = {}
    for owner_path, owner in block.named_modules():
        tensors = list(owner.named_parameters(recurse=False)) + list(owner.named_buffers(recurse=False))
        for leaf, tensor in tensors:
            parts = roles_of_tensor(block, owner_path, leaf, tensor)
            for (role, elements), part_bytes in zip(parts, _bytes_of_parts(tensor, parts, storage)):
                params[role] = params.get(role, 0) + elements
                num_bytes[role] = num_bytes.get(role, 0) + part_bytes
    roles = {role: RoleShare(params[role], num_bytes[role]) for role in Role if role in params}
    return BlockBreakdown(name, kind, roles)


def _bytes_of_parts(tensor, parts, storage: DType) -> list[int]:
    """The tensor's stored bytes shared between its parts in proportion to their elements
    (the last part takes the rounding: the parts add up to the tensor's bytes)."""
    numel = tensor.numel()
    total = storage_dtype(storage, tuple(tensor.shape)).nbytes(numel)
    shares = [total * elements // numel if numel else 0 for _, elements in parts]
    shares[-1] = total - sum(shares[:-1])
    return shares


def breakdown_of_blocks(
    blocks: Iterable[tuple[str, str, object]], storage: DType
) -> tuple[BlockBreakdown, ...]:
    """Each block's breakdown, in the order given."""
    return tuple(block_breakdown(name, kind, block, storage) for name, kind, block in blocks)


def by_kind(breakdowns: Sequence[BlockBreakdown]) -> tuple[BlockBreakdown, ...]:
    """The blocks of each kind added up, kinds in order of first appearance."""
    kinds: dict[str, list[BlockBreakdown]] = {}
    for b in breakdowns:
        kinds.setdefault(b.kind, []).append(b)
    out = []
    for kind, members in kinds.items():
        roles = {
            role: RoleShare(sum(m.roles[role].params for m in members if role in m.roles),
                            sum(m.roles[role].bytes for m in members if role in m.roles))
            for role in Role if any(role in m.roles for m in members)
        }
        out.append(BlockBreakdown(kind, kind, roles, blocks=len(members)))
    return tuple(out)


def model_breakdown(model_id: str, storage: DType | None = None) -> tuple[BlockBreakdown, ...]:
    """Every block of catalog model `model_id`, built on `meta` (no weights, no memory)."""
    from runtime.catalog import get_model
    from runtime.families import get_family

    spec = get_model(model_id)
    adapter = get_family(spec.family)
    model = adapter.build(spec.config, device="meta")
    return breakdown_of_blocks(adapter.blocks(model), storage or spec.storage_dtype)
