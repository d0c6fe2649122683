"""FLOPs of one block forward, counted from the module's real shapes.

Every `nn.Linear` costs 2 x in x out per token that passes through it (a multiply and an add
per weight; the bias add is not counted, as `torch.utils.flop_counter` does not count it).
Which tokens pass through a layer depends on the stream it belongs to: a FLUX double block
runs `attn.to_q` and `ff` on image tokens, `attn.add_q_proj` and `ff_context` on text tokens,
and its `norm1.linear` (modulation) once per sample on the time embedding; a single block runs
everything but its modulation on image + text tokens. Those rules are kept per module class in
`_RULES` (one registration per new block class). Attention adds QK^T and AV:
2 x 2 x batch x heads x seq^2 x head_dim, seq = image + text tokens (joint attention).

Works on a module built on the `meta` device: only shapes are read.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Any, Mapping

from runtime.errors import UserError
from runtime.workload import Workload


class Stream(str, enum.Enum):
    IMAGE = "image"  # image tokens only
    TEXT = "text"  # text tokens only
    JOINT = "joint"  # image + text tokens
    SAMPLE = "sample"  # one vector per sample (time embedding, modulation)


@dataclasses.dataclass(frozen=True)
class StreamRule:
    """Which stream each Linear of a module class sees: first matching name prefix wins."""

    default: Stream
    prefixes: tuple[tuple[str, Stream], ...] = ()
    joint_attention: bool = False  # one attention over image + text tokens
    pixels_per_token_side: int = 16

    def stream_of(self, linear_name: str) -> Stream:
        for prefix, stream in self.prefixes:
            if linear_name.startswith(prefix):
                return stream
        return self.default


_FLUX_DOUBLE = StreamRule(
    default=Stream.IMAGE,
    prefixes=(
        ("norm1.", Stream.SAMPLE),
        ("norm1_context.", Stream.SAMPLE),
        ("attn.add_", Stream.TEXT),
        ("attn.to_add_out", Stream.TEXT),
        ("ff_context.", Stream.TEXT),
    ),
    joint_attention=True,
)
_FLUX_SINGLE = StreamRule(default=Stream.JOINT, prefixes=(("norm.", Stream.SAMPLE),), joint_attention=True)
_FLUX_MODEL = StreamRule(  # the non-block modules of the whole transformer
    default=Stream.SAMPLE,  # time_text_embed.*, norm_out.linear
    prefixes=(("x_embedder", Stream.IMAGE), ("proj_out", Stream.IMAGE), ("context_embedder", Stream.TEXT)),
)

# Keyed by module class name so that registering a rule imports nothing.
_RULES: dict[str, StreamRule] = {
    "FluxTransformerBlock": _FLUX_DOUBLE,
    "FluxSingleTransformerBlock": _FLUX_SINGLE,
    "FluxTransformer2DModel": _FLUX_MODEL,
}


def register_rule(class_name: str, rule: StreamRule) -> None:
    _RULES[class_name] = rule


def rule_of(module) -> StreamRule:
    name = type(module).__name__
    try:
        return _RULES[name]
    except KeyError:
        raise UserError(
            f"no FLOP rule for module class {name}: register one with profiler.flops.register_rule"
        ) from None


def image_tokens(workload: Workload, rule: StreamRule) -> int:
    side = rule.pixels_per_token_side
    return (workload.height // side) * (workload.width // side)


def tokens(stream: Stream, workload: Workload, rule: StreamRule) -> int:
    """Tokens of `stream` in one forward (batch included)."""
    batch = workload.forward_batch
    image = image_tokens(workload, rule)
    per_sample = {
        Stream.IMAGE: image,
        Stream.TEXT: workload.text_tokens,
        Stream.JOINT: image + workload.text_tokens,
        Stream.SAMPLE: 1,
    }[stream]
    return batch * per_sample


def linear_flops(module, workload: Workload, skip: frozenset[int] = frozenset()) -> int:
    """2 x in x out x tokens for every nn.Linear in `module` (those in `skip` by id excluded)."""
    import torch

    rule = rule_of(module)
    total = 0
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Linear) and id(sub) not in skip:
            n_tokens = tokens(rule.stream_of(name), workload, rule)
            total += 2 * sub.in_features * sub.out_features * n_tokens
    return total


def config_value(config: Mapping[str, Any] | Any, key: str) -> Any:
    if isinstance(config, Mapping):
        return config[key]
    return getattr(config, key)


def attention_flops(block, workload: Workload, config) -> int:
    """QK^T and AV of the block's attention: 2 x 2 x batch x heads x seq^2 x head_dim."""
    rule = rule_of(block)
    if not rule.joint_attention:
        return 0
    heads = int(config_value(config, "num_attention_heads"))
    head_dim = int(config_value(config, "attention_head_dim"))
    seq = image_tokens(workload, rule) + workload.text_tokens
    return 2 * 2 * workload.forward_batch * heads * seq * seq * head_dim


def block_flops(block_module, kind: str, workload: Workload, config) -> int:
    """FLOPs of one forward of `block_module` (a block of `kind`) at `workload`."""
    del kind  # the module class decides the rule; kind is kept for callers that log it
    return linear_flops(block_module, workload) + attention_flops(block_module, workload, config)


def non_block_flops(model, adapter, workload: Workload) -> int:
    """FLOPs of everything outside the blocks (embedders, norm_out, proj_out), one forward."""
    in_blocks = set()
    for _, _, block in adapter.blocks(model):
        in_blocks.update(id(m) for m in block.modules())
    return linear_flops(model, workload, skip=frozenset(in_blocks))


@dataclasses.dataclass(frozen=True)
class ModelFlops:
    blocks: tuple[tuple[str, str, int], ...]  # (name, kind, FLOPs) in execution order
    non_block: int

    @property
    def block_total(self) -> int:
        return sum(f for _, _, f in self.blocks)

    @property
    def total(self) -> int:
        """One forward; multiply by `workload.forwards_per_step` for a step."""
        return self.block_total + self.non_block


@functools.lru_cache(maxsize=4)
def meta_model(model_id: str):
    """The catalog model built on `meta` (shapes only), with its adapter; cached."""
    from runtime.catalog import get_model
    from runtime.families import get_family

    spec = get_model(model_id)
    adapter = get_family(spec.family)
    return adapter.build(spec.config, device="meta"), adapter


@functools.lru_cache(maxsize=64)
def model_flops(model_id: str, workload: Workload) -> ModelFlops:
    """FLOPs of every block and of the non-block modules of a catalog model at `workload`."""
    model, adapter = meta_model(model_id)
    per_block = tuple(
        (name, kind, block_flops(block, kind, workload, model.config))
        for name, kind, block in adapter.blocks(model)
    )
    return ModelFlops(per_block, non_block_flops(model, adapter, workload))
