"""FLOPs and activation peaks of a model at a workload, counted from one forward on `meta`.

The family adapter makes whole-model inputs on the `meta` device, and the model (built on
`meta`, so no memory and no arithmetic) runs one forward under torch's own `FlopCounterMode`,
which counts every matmul, convolution and scaled-dot-product attention from shapes. The same
forward runs under `_LiveBytes`, which adds up the bytes of every tensor an op allocates and
subtracts them when the tensor dies: the peak of that count inside a block, above what was live
when the block started, is the block's activation peak, as the profiler measures it on a GPU
(`max_memory_allocated` over the forward minus what was allocated before). Attention counts as
one fused op (no seq^2 score matrix), as flash/memory-efficient SDPA runs it.

No family is named here and none needs a rule: whatever its blocks do, the forward counts it.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref

from runtime.dtypes import DType
from runtime.workload import Workload


@dataclasses.dataclass(frozen=True)
class BlockTrace:
    name: str
    kind: str
    flops: int  # one forward of this block
    activation_bytes: int  # peak bytes allocated inside the block beyond what was live before


@dataclasses.dataclass(frozen=True)
class ModelTrace:
    blocks: tuple[BlockTrace, ...]  # execution order
    non_block: int  # FLOPs outside the blocks (embedders, norm_out, proj_out), one forward
    peak_bytes: int  # whole forward: peak allocated beyond the inputs

    @property
    def block_total(self) -> int:
        return sum(b.flops for b in self.blocks)

    @property
    def total(self) -> int:
        """One forward; multiply by `workload.forwards_per_step` for a step."""
        return self.block_total + self.non_block

    def block(self, name: str) -> BlockTrace:
        for trace in self.blocks:
            if trace.name == name:
                return trace
        raise KeyError(name)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelTrace":
        return cls(tuple(BlockTrace(**b) for b in data["blocks"]), data["non_block"],
                   data["peak_bytes"])


@functools.lru_cache(maxsize=8)
def meta_model(model_id: str, dtype: DType | None = None):
    """The catalog model built on `meta` (shapes only; in `dtype` if given), with its adapter;
    cached, so callers must not change it."""
    from runtime.catalog import get_model
    from runtime.families import get_family

    spec = get_model(model_id)
    adapter = get_family(spec.family)
    return adapter.build(spec.config, device="meta", dtype=dtype.torch() if dtype else None), adapter


@functools.lru_cache(maxsize=64)
def model_trace(model_id: str, workload: Workload, compute: DType = DType.BF16) -> ModelTrace:
    """FLOPs and activation peaks of every block of a catalog model at `workload`, traced on
    `meta` once and then read from the model cache (`runtime.model_cache`)."""
    from runtime.catalog import get_model
    from runtime.model_cache import cached

    data = cached("trace", get_model(model_id), trace_args(workload, compute),
                  lambda: derive_trace(model_id, workload, compute).to_dict())
    return ModelTrace.from_dict(data)


def trace_args(workload: Workload, compute: DType) -> dict:
    return {**dataclasses.asdict(workload), "cfg": workload.cfg.value, "compute": compute.value}


def derive_trace(model_id: str, workload: Workload, compute: DType) -> ModelTrace:
    model, adapter = meta_model(model_id, compute)
    return trace_module(model, adapter, workload, compute)


def trace_module(model, adapter, workload: Workload, compute: DType) -> ModelTrace:
    """One forward of `model` (on `meta`, parameters in `compute`) at `workload`."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    blocks = adapter.blocks(model)
    inputs = adapter.model_inputs(model, workload, "meta", compute.torch())
    live = _LiveBytes()
    hooks = []
    for name, _, block in blocks:
        hooks.append(block.register_forward_pre_hook(lambda *_, name=name: live.enter(name)))
        hooks.append(block.register_forward_hook(lambda *_, name=name: live.exit(name)))
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter, live:
            live.enter("")
            model(**inputs)
            live.exit("")
    finally:
        for hook in hooks:
            hook.remove()
    counts = counter.get_flop_counts()
    root = type(model).__name__
    traces = tuple(
        BlockTrace(name, kind, sum(counts.get(f"{root}.{name}", {}).values()), live.peaks[name])
        for name, kind, _ in blocks
    )
    block_total = sum(t.flops for t in traces)
    return ModelTrace(traces, counter.get_total_flops() - block_total, live.peaks[""])


def block_flops(model, adapter, block_name: str, workload: Workload, compute: DType) -> BlockTrace:
    """The trace of one block of a `meta` model (runs the whole forward once)."""
    return trace_module(model, adapter, workload, compute).block(block_name)


class _LiveBytes:
    """Counts bytes of tensors ops allocate while active; `peaks[name]` is the peak inside
    each entered span above what was live when it was entered. Views and in-place results
    allocate nothing; a tensor's bytes leave the count when it is freed."""

    def __init__(self) -> None:
        self.live = 0
        self.peaks: dict[str, int] = {}
        self._open: dict[str, tuple[int, int]] = {}  # name -> (live at entry, peak so far)
        self._mode = None

    def enter(self, name: str) -> None:
        self._open[name] = (self.live, self.live)

    def exit(self, name: str) -> None:
        base, peak = self._open.pop(name)
        self.peaks[name] = max(self.peaks.get(name, 0), peak - base)

    def _allocated(self, num_bytes: int) -> None:
        self.live += num_bytes
        for name, (base, peak) in self._open.items():
            if self.live > peak:
                self._open[name] = (base, self.live)

    def _freed(self, num_bytes: int) -> None:
        self.live -= num_bytes

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if not func.is_view:
                    tracker._count(args, kwargs, out)
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        self._mode = None

    def _count(self, args, kwargs, out) -> None:
        import torch
        from torch.utils._pytree import tree_flatten

        given = {id(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and id(tensor) not in given:
                num_bytes = tensor.untyped_storage().nbytes()
                self._allocated(num_bytes)
                weakref.finalize(tensor, self._freed, num_bytes)
