"""What each parameter of a block does: attention (q, k, v, out), MLP, modulation, norm, other.

Roles come from an ordered registry of rules keyed by the tensor's path inside its block
(a regular expression) and, optionally, the class of the module that owns it; the first rule
that matches decides. A rule either names one role or splits a fused tensor between roles by
rows or columns (FLUX's single blocks feed `[attention output | MLP hidden]` through one
`proj_out`: its columns are split at the width of `proj_mlp`). Nothing names a family: the
rules read module paths and attributes, so any `nn.Module` and block list can be broken down
(the generic block path calls this for modules no adapter knows). A new naming is one
`register_rule` call; tensors no rule matches count as `other`.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import Callable

# (role, elements) for each part of one tensor; the elements add up to the tensor's numel
Split = tuple[tuple["Role", int], ...]


class Role(str, enum.Enum):
    Q = "attention.q"
    K = "attention.k"
    V = "attention.v"
    OUT = "attention.out"
    MLP = "mlp"
    MODULATION = "modulation"
    NORM = "norm"
    OTHER = "other"

    @property
    def group(self) -> "Group":
        return _GROUP[self]


class Group(str, enum.Enum):
    """The four headline groups a breakdown is reported in."""

    ATTENTION = "attention"
    MLP = "mlp"
    MODULATION_NORMS = "modulation/norms"
    OTHER = "other"


_GROUP = {
    Role.Q: Group.ATTENTION, Role.K: Group.ATTENTION, Role.V: Group.ATTENTION,
    Role.OUT: Group.ATTENTION, Role.MLP: Group.MLP, Role.MODULATION: Group.MODULATION_NORMS,
    Role.NORM: Group.MODULATION_NORMS, Role.OTHER: Group.OTHER,
}

# (block, the owning module's path inside the block, the tensor's leaf name, tensor) -> Split
Splitter = Callable[[object, str, str, object], Split | None]


@dataclasses.dataclass(frozen=True)
class RoleRule:
    """Tensors whose in-block path matches `path` (searched) and whose owning module's class
    name matches `owner` (when given) take `role`, or are divided by `split` (which may
    return None: the rule does not apply, the next one is asked)."""

    path: re.Pattern
    role: Role | None = None
    owner: re.Pattern | None = None
    split: Splitter | None = None

    def roles_of(self, block, owner_path: str, owner, leaf: str, tensor) -> Split | None:
        if not self.path.search(f"{owner_path}.{leaf}" if owner_path else leaf):
            return None
        if self.owner is not None and not self.owner.search(type(owner).__name__):
            return None
        if self.split is not None:
            return self.split(block, owner_path, leaf, tensor)
        return ((self.role, tensor.numel()),)


_RULES: list[RoleRule] = []


def register_rule(rule: RoleRule, first: bool = False) -> RoleRule:
    """Add a rule after the built-in ones (or before all of them: `first`)."""
    _RULES.insert(0, rule) if first else _RULES.append(rule)
    return rule


def roles_of_tensor(block, owner_path: str, leaf: str, tensor) -> Split:
    """The roles of one tensor of `block` (owned by the submodule at `owner_path`)."""
    owner = block.get_submodule(owner_path) if owner_path else block
    for rule in _RULES:
        found = rule.roles_of(block, owner_path, owner, leaf, tensor)
        if found is not None:
            return found
    return ((Role.OTHER, tensor.numel()),)


# ------------------------------------------------------------------ fused tensors


def _parent(block, owner_path: str):
    parent_path = owner_path.rpartition(".")[0]
    return block.get_submodule(parent_path) if parent_path else block


class ColumnSplit(tuple):
    """A split of a weight `[out, in]` by input columns: `columns` keeps each part's
    `(role, first column, end column)`, for whoever reads the MLP's part of the input."""

    columns: tuple[tuple[Role, int, int], ...] = ()


def _by_columns(tensor, widths: tuple[tuple[Role, int], ...]) -> Split | None:
    """A weight `[out, in]` whose input columns are the concatenation of `widths`."""
    if tensor.dim() != 2 or tensor.shape[1] != sum(w for _, w in widths):
        return None
    split = ColumnSplit((role, tensor.shape[0] * width) for role, width in widths if width)
    starts = [sum(w for _, w in widths[:i]) for i in range(len(widths))]
    split.columns = tuple((role, start, start + width)
                          for (role, width), start in zip(widths, starts) if width)
    return split


def _by_rows(tensor, heights: tuple[tuple[Role, int], ...]) -> Split | None:
    """A weight `[out, in]` (or its bias) whose output rows are the concatenation of `heights`."""
    if tensor.shape[0] != sum(h for _, h in heights):
        return None
    per_row = tensor.numel() // tensor.shape[0]
    return tuple((role, height * per_row) for role, height in heights if height)


def _proj_out_beside_proj_mlp(block, owner_path: str, leaf: str, tensor) -> Split | None:
    """FLUX.1 / Chroma / HunyuanVideo single blocks: `proj_out` reads `[attention | mlp]`,
    the MLP part as wide as the sibling `proj_mlp`'s output; its bias is the output's."""
    sibling = getattr(_parent(block, owner_path), "proj_mlp", None)
    if sibling is None or not hasattr(sibling, "out_features"):
        return None
    if leaf != "weight":
        return ((Role.OUT, tensor.numel()),)
    mlp = sibling.out_features
    return _by_columns(tensor, ((Role.OUT, tensor.shape[1] - mlp), (Role.MLP, mlp)))


def _parallel_attention_out(block, owner_path: str, leaf: str, tensor) -> Split | None:
    """FLUX.2 single blocks: the attention module's `to_out` reads `[attention | mlp]`
    (`inner_dim` + `mlp_hidden_dim` columns)."""
    attn = _parent(block, owner_path)
    inner, mlp = getattr(attn, "inner_dim", None), getattr(attn, "mlp_hidden_dim", None)
    if inner is None or mlp is None:
        return None
    if leaf != "weight":
        return ((Role.OUT, tensor.numel()),)
    return _by_columns(tensor, ((Role.OUT, inner), (Role.MLP, mlp)))


def _parallel_attention_in(block, owner_path: str, leaf: str, tensor) -> Split | None:
    """FLUX.2 single blocks: `to_qkv_mlp_proj` writes `[q | k | v | mlp (gated: x factor)]`."""
    attn = _parent(block, owner_path)
    inner, mlp = getattr(attn, "inner_dim", None), getattr(attn, "mlp_hidden_dim", None)
    if inner is None or mlp is None:
        return None
    factor = getattr(attn, "mlp_mult_factor", 1)
    return _by_rows(tensor, ((Role.Q, inner), (Role.K, inner), (Role.V, inner),
                             (Role.MLP, mlp * factor)))


def _bfl_single(block, owner_path: str):
    """The BFL/ComfyUI single block owning `owner_path`: (width, MLP input rows, MLP width)."""
    parent = _parent(block, owner_path)
    width, mlp = getattr(parent, "hidden_size", None), getattr(parent, "mlp_hidden_dim", None)
    if width is None or mlp is None:
        return None
    return width, getattr(parent, "mlp_hidden_dim_first", mlp), mlp


def _bfl_linear1(block, owner_path: str, leaf: str, tensor) -> Split | None:
    """BFL/ComfyUI single blocks: `linear1` writes `[q | k | v | mlp input]`."""
    sizes = _bfl_single(block, owner_path)
    if sizes is None:
        return None
    width, first, _ = sizes
    return _by_rows(tensor, ((Role.Q, width), (Role.K, width), (Role.V, width), (Role.MLP, first)))


def _bfl_linear2(block, owner_path: str, leaf: str, tensor) -> Split | None:
    """BFL/ComfyUI single blocks: `linear2` reads `[attention | mlp]`; its bias is the output's."""
    sizes = _bfl_single(block, owner_path)
    if sizes is None:
        return None
    if leaf != "weight":
        return ((Role.OUT, tensor.numel()),)
    width, _, mlp = sizes
    return _by_columns(tensor, ((Role.OUT, width), (Role.MLP, mlp)))


def _fused_qkv(block, owner_path: str, leaf: str, tensor) -> Split | None:
    """One projection writing q, k and v in thirds (BFL / ComfyUI `img_attn.qkv`)."""
    rows = tensor.shape[0]
    if rows % 3:
        return None
    return _by_rows(tensor, ((Role.Q, rows // 3), (Role.K, rows // 3), (Role.V, rows // 3)))


def _inside_adaptive_norm(block, owner_path: str, leaf: str, tensor) -> Split | None:
    """The projection of an adaptive norm (diffusers' `AdaLayerNormZero.linear`,
    `HunyuanVideoAdaNorm.linear`) computes the block's shift, scale and gate from the
    conditioning: modulation."""
    if not re.search(r"Ada\w*Norm", type(_parent(block, owner_path)).__name__):
        return None
    return ((Role.MODULATION, tensor.numel()),)


_BY_LEAF = {"q": Role.Q, "query": Role.Q, "k": Role.K, "key": Role.K, "v": Role.V,
            "value": Role.V, "o": Role.OUT, "out": Role.OUT}


def _inside_attention(block, owner_path: str, leaf: str, tensor) -> Split | None:
    """A projection named q, k, v, o (query, key, value, out) of a module whose class is an
    attention (transformers' `T5Attention`, `CLIPAttention` with `q_proj` matched above)."""
    role = _BY_LEAF.get(owner_path.rpartition(".")[2])
    if role is None or not re.search(r"Attention|Attn", type(_parent(block, owner_path)).__name__):
        return None
    return ((role, tensor.numel()),)


def _inside_mlp(block, owner_path: str, leaf: str, tensor) -> Split | None:
    """Any tensor of a module whose class is an MLP (`T5DenseGatedActDense`, `CLIPMLP`, ...)."""
    parts = owner_path.split(".") if owner_path else []
    for depth in range(len(parts), 0, -1):
        module = block.get_submodule(".".join(parts[:depth]))
        if re.search(r"MLP|Mlp|FeedForward|FFN|Dense", type(module).__name__):
            return ((Role.MLP, tensor.numel()),)
    return None


def _rule(path: str, role: Role | None = None, owner: str | None = None,
          split: Splitter | None = None) -> RoleRule:
    return RoleRule(re.compile(path), role, re.compile(owner) if owner else None, split)


_NAME = r"(?:^|\.)"  # the start of a path component
_TAIL = r"(?:\.0)?\.\w+$"  # an optional `.0` (diffusers' `to_out.0`), then the leaf

for _built_in in (
    # fused tensors first: their names would otherwise match a whole-tensor rule below
    _rule(_NAME + r"proj_out\.\w+$", split=_proj_out_beside_proj_mlp),
    _rule(_NAME + r"to_out\.\w+$", split=_parallel_attention_out),
    _rule(_NAME + r"to_qkv_mlp_proj\.\w+$", split=_parallel_attention_in),
    _rule(_NAME + r"qkv\.\w+$", split=_fused_qkv),
    _rule(r"^linear1\.\w+$", split=_bfl_linear1),
    _rule(r"^linear2\.\w+$", split=_bfl_linear2),
    # attention projections (self, cross and the context stream's added ones)
    _rule(_NAME + r"(?:to_q|add_q_proj|q_proj)" + _TAIL, Role.Q),
    _rule(_NAME + r"(?:to_k|add_k_proj|k_proj)" + _TAIL, Role.K),
    _rule(_NAME + r"(?:to_v|add_v_proj|v_proj)" + _TAIL, Role.V),
    _rule(_NAME + r"(?:to_out|to_add_out|o_proj|out_proj|\w*attn\.proj)" + _TAIL, Role.OUT),
    # modulation: adaptive-norm projections, `*_mod`/`*modulation` modules, scale-shift tables
    _rule(_NAME + r"linear\.\w+$", split=_inside_adaptive_norm),
    _rule(_NAME + r"(?:\w+_mod|\w*modulation|mod)(?:\.\w+)*\.\w+$", Role.MODULATION),
    _rule(_NAME + r"(?:scale_shift_table|time_emb_proj(?:\.\w+)?)$", Role.MODULATION),
    # MLPs: feed-forward modules and the MLP input of single-stream blocks
    _rule(_NAME + r"(?:ff|ff_context|ffn|feed_forward|img_mlp|txt_mlp|mlp|proj_mlp)(?:\.\w+)*$",
          Role.MLP),
    # modules no name above matched, known by their class: attention projections, MLPs
    _rule(_NAME + r"\w+\.\w+$", split=_inside_attention),
    _rule(r"\w+$", split=_inside_mlp),
    # norms: any module whose class is a norm (LayerNorm, RMSNorm, GroupNorm, ...)
    _rule(r"\w+$", Role.NORM, owner=r"Norm"),
):
    register_rule(_built_in)
