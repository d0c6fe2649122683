"""The profile of a model measured during one real forward (the user's own first step).

`FirstStepMeter(model, blocks, device)` is a context manager around one forward of a model
whose blocks run under the engine (every block streamed, depth 1, in `planner.app.auto`). Its
hooks sit innermost on every block: the start is taken after the ring has bound the block's
slot (and, on CUDA, after the compute stream waited for the copy), the end before the ring
frees the slot, so what is timed is the block's compute alone:

- compute per block: CUDA events recorded on the compute stream (read once, after the
  forward); `perf_counter` on CPU;
- activation per block: on CUDA the allocator's peak while the block runs above what was
  allocated when it started (`torch.cuda.max_memory_allocated`, reset per block); on CPU,
  which has no allocator statistics, the bytes of the block's outputs;
- workspace: on CUDA the allocator's peak during the forward less the device weights and
  the largest activation (inputs, carried tensors, library workspaces, and anything else the
  run holds on the device: the budget counts what is really there); on CPU the largest block's input bytes,
  the tensors carried from block to block (as `profiler.run` counts them);
- non-block time: the forward's time less its blocks' time.

`profile_of(...)` turns the readings and a copy-bandwidth measurement on the model's own
streamed packs (`measure_pack_bandwidth`) into a `profiler.types.Profile`. The bandwidth is
measured between forwards, without compute beside it: it stands for the bandwidth under
compute too (the offline profiler measures that one apart).
"""

from __future__ import annotations

import dataclasses
import datetime
import statistics
import time

import torch

from profiler.bandwidth import copy_overhead_us
from profiler.machine import machine_facts
from profiler.timing import timed
from profiler.types import Bandwidth, BlockProfile, Profile
from runtime.dtypes import compute_dtype
from runtime.version import TOOL_VERSION

COPY_REPS = 3


@dataclasses.dataclass(frozen=True)
class Readings:
    compute_ms: dict  # block name -> ms
    activation_bytes: dict  # block name -> bytes
    forward_ms: float
    peak_bytes: int  # CUDA: the allocator's peak during the forward (all it holds); CPU: 0
    carried_bytes: int  # largest block input


class FirstStepMeter:
    """Per-block timing and memory hooks for one forward (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, blocks, device: torch.device) -> None:
        self.model = model
        self.blocks = list(blocks)  # (name, kind, module)
        self.cuda = device.type == "cuda"
        self.device = device
        self._hooks: list = []
        self._start: dict[str, object] = {}
        self._spans: dict[str, tuple] = {}
        self._activation: dict[str, int] = {}
        self._carried = 0
        self._peak = 0  # CUDA: the allocator peak over the forward, segment by segment
        self._forward: list = []

    def __enter__(self) -> "FirstStepMeter":
        for name, _, module in self.blocks:
            self._hook(module, name, None)
            for child_name, child in module.named_children():  # for a block never called
                if any(True for _ in child.parameters()):  # whose children are (discovery)
                    self._hook(child, f"{name}.{child_name}", name)
        self._forward.append(self._clock())
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def _hook(self, module: torch.nn.Module, name: str, parent: str | None) -> None:
        """Time `module` as `name`; a child only while its parent block is not running."""

        def before(m, args, kwargs):
            if parent not in self._start:
                self._before(name, args, kwargs)

        def after(m, args, out):
            if parent not in self._start:
                self._after(name, out)

        self._hooks.append(module.register_forward_pre_hook(torch.compiler.disable(before),
                                                            with_kwargs=True))
        self._hooks.append(module.register_forward_hook(torch.compiler.disable(after),
                                                        prepend=True, always_call=True))

    def __exit__(self, *exc) -> None:
        self._forward.append(self._clock())
        if self.cuda:
            self._peak = max(self._peak, torch.cuda.max_memory_allocated(self.device))
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _clock(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return time.perf_counter()

    def _before(self, name: str, args, kwargs) -> None:
        self._carried = max(self._carried, _tensor_bytes(list(args) + list(kwargs.values())))
        if self.cuda:
            self._activation[name] = torch.cuda.memory_allocated(self.device)
            self._peak = max(self._peak, torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
        self._start[name] = self._clock()

    def _after(self, name: str, output) -> None:
        start = self._start.pop(name, None)
        if start is None or name in self._spans:
            return  # called again in this forward: the recorder leaves such a module out
        self._spans[name] = (start, self._clock())
        if self.cuda:
            peak = torch.cuda.max_memory_allocated(self.device)
            self._peak = max(self._peak, peak)
            self._activation[name] = max(0, peak - self._activation[name])
        else:
            self._activation[name] = _tensor_bytes([output])

    def readings(self) -> Readings:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            ms = {n: a.elapsed_time(b) for n, (a, b) in self._spans.items()}
            forward = self._forward[0].elapsed_time(self._forward[1])
            peak = self._peak  # absolute: weights, inputs and whatever else the run holds
        else:
            ms = {n: (b - a) * 1000.0 for n, (a, b) in self._spans.items()}
            forward = (self._forward[1] - self._forward[0]) * 1000.0
            peak = 0
        return Readings(ms, dict(self._activation), forward, max(0, peak), self._carried)


def _tensor_bytes(values) -> int:
    total = 0
    for v in values:
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, (tuple, list)):
            total += _tensor_bytes(v)
        elif isinstance(v, dict):
            total += _tensor_bytes(list(v.values()))
        elif hasattr(v, "to_tuple"):  # diffusers / transformers output classes
            total += _tensor_bytes(list(v.to_tuple()))
    return total


def measure_pack_bandwidth(pack, slot, device: torch.device) -> Bandwidth:
    """Copy bandwidth into a ring slot from a streamed block's own host pack (pinned or
    pageable, as the engine keeps it), median of a few copies; pageable measured from a
    pageable copy of that pack. `pack` and `slot`: {group: flat tensor} (the handle's
    `queued_copy()`, whose bytes the copies rewrite unchanged)."""
    size = sum(t.numel() * t.element_size() for t in pack.values())
    kept = _copy_gbps(pack, slot, device, size)
    pinned = any(t.is_pinned() for t in pack.values())
    plain = _copy_gbps({g: t.clone() for g, t in pack.items()}, slot, device, size) if pinned else kept
    return Bandwidth(pinned_gbps=kept, pageable_gbps=plain, pinned_under_compute_gbps=kept,
                     copy_overhead_us=copy_overhead_us(device))


def _copy_gbps(pack, slot, device: torch.device, size: int) -> float:
    def copy():
        for group, host in pack.items():
            slot[group].narrow(0, 0, host.numel()).copy_(host, non_blocking=host.is_pinned())

    copy()  # warm-up
    seconds = statistics.median(timed(device, copy) for _ in range(COPY_REPS))
    return size / max(seconds, 1e-9) / 1e9


def profile_of(model_id: str, workload, storage, inventory, readings: Readings, bandwidth: Bandwidth,
               device_weight_bytes: int, device: torch.device) -> Profile:
    """The `Profile` of `inventory`'s blocks (execution order) from one forward's readings."""
    blocks = tuple(
        BlockProfile(b.name, b.kind, b.index, b.bytes, readings.compute_ms[b.name], 0.0,
                     int(readings.activation_bytes[b.name]))
        for b in inventory.blocks
    )
    block_ms = sum(b.compute_ms for b in blocks)
    activation = max((b.activation_bytes for b in blocks), default=0)
    if device.type == "cuda":
        workspace = max(0, readings.peak_bytes - device_weight_bytes - activation)
    else:
        workspace = readings.carried_bytes
    machine = machine_facts(str(device))
    return Profile(
        machine=machine, device=str(device), model_id=model_id, workload=workload,
        storage_dtype=storage, compute_dtype=compute_dtype(storage), bandwidth=bandwidth,
        blocks=blocks, non_block_ms=max(0.0, readings.forward_ms - block_ms),
        non_block_bytes=inventory.non_block_bytes, workspace_bytes=int(workspace),
        is_estimate=False,
        source=f"measured on {machine.gpu_name} ({device}) during the model's first forward, every "
               f"block streamed at depth 1; copy bandwidth from its own packs",
        tool_version=TOOL_VERSION,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
