"""The cost model: a discrete-event simulation of the runtime's streaming schedule.

It simulates exactly the rule in `runtime.schedule` (read its docstring): blocks run in
execution order, forward after forward; streamed blocks are numbered with one use counter `g`
across forwards and steps; use `g` sits in ring slot `g % slots` with `slots = min(depth, m)`;
copies of uses 0..slots-1 are issued first; compute of `g` waits for the copy of `g`; the copy
of `g + slots` is issued once compute of `g` is enqueued and starts when compute of `g` has
finished (slot free) and the copy before it on the single FIFO copy stream has finished.

Two ways forwards follow each other, one schedule:
- steady (`step_ms`, what the search minimises): forward after forward with no host
  synchronisation, as a denoising loop runs them; the wrap-around prefetch of the next
  forward's first streamed blocks runs under the next forward's compute. Here a deeper ring
  never loses: every copy may start no later.
- synchronized (`synchronized_step_ms`): the device synchronised before and after every
  forward, as a benchmark timing forwards with a host clock does. The synchronize waits for
  the wrap-around copies too, so a deeper ring, which prefetches more at the tail, can lose.
  The H100 runs were timed this way: replayed, it matches them within 1.7 % (mean |error|
  0.44 %; 2.3 % and 0.81 % without the overheads below), tests/test_replay_h100.py,
  bench/replay_h100.py.
Neither blocks the host (the runtime never does); the host's own pace is an overhead below.

Durations, in ms:
- copy of a block = per-copy overhead x its dtype groups + device bytes / bandwidth, where the
  bytes are `device_bytes_by_dtype(block, cast_on_host=(cast is pre))` and the bandwidth is
  `pinned_under_compute_gbps` from pinned host memory. Pageable host memory blocks the host
  for the copy, so a pageable copy is serialised with compute, at `pageable_gbps`.
- compute of a block = `compute_ms`, plus `cast_ms` when fp8 storage is cast, or quantized
  storage (GGUF, NF4) dequantized, on the device (`auto`), for streamed and resident blocks
  alike; `pre` sends (and keeps) the compute dtype, dequantized on the host.
- each forward starts with the non-block modules (`non_block_ms`).
- a disk-tier block's copy waits for its read: a third stage ahead of the copy stream, one
  reader reading the disk-tier uses in order, each its aligned bytes at the profile's disk
  bandwidth (`Bandwidth.disk_gbps`), into one of `runtime.tiers.DEFAULT_STAGING` staging
  buffers, which is free again once the copy out of it ended
  (`runtime.engine.disk_tier`).

Overheads (`planner.timeline.Overheads`, per device kind: `overheads_of`): what the stream
durations alone miss, and what matters where per-block compute is small and the copies bind:
- a stream blocked on the other stream's event (compute on its copy, a copy on its slot's last
  compute) resumes `event_wait_us` after the event fires;
- the host enqueues block after block, `host_block_us` each: a block's compute neither starts
  before the host began it nor ends before the host finished it, and the copy the host issues
  after a block's compute waits for the host too (launch overhead: where compute per block is
  below it, the host sets the pace and the prefetch it issues comes late);
- a synchronised forward's host starts `forward_start_us` behind the idle device.
On the CPU the host runs each operation itself: no overheads.

Memory: peak VRAM = device weight bytes + activation peak + workspace: what torch's allocator
holds at its peak (`torch.cuda.max_memory_allocated`). Device weight bytes = resident blocks'
device bytes + the non-block modules' device bytes (`Inventory.non_block_device_bytes`: the
runtime keeps them in the compute dtype) + the ring (`runtime.schedule.ring_bytes`); the
runtime reports the same device weight bytes. The workspace is the profile's: tensors carried
between blocks and library workspaces, measured as they are used. A plan fits a budget when
its peak is at most `usable_bytes(budget)`: the budget less what the card keeps outside the
allocator (CUDA context, other processes) and a margin (`planner.reserve`).

Lower bound at a budget V (`CostModel.lower_bound_ms`, `planner.floor`): the real floor, the
best any placement could do within V: max(compute of every forward plus the casts a placement
cannot avoid, the fewest bytes that must stream / the best bandwidth), minimised over which
blocks stay resident and each block's cast.
"""

from __future__ import annotations

import dataclasses
import functools

from planner import reserve
from runtime.dtypes import DType, compute_dtype
# the timeline's events and overheads are this module's API too (callers import them from here)
from planner.timeline import (  # noqa: F401
    CUDA_OVERHEADS,
    NO_OVERHEADS,
    NON_BLOCK,
    Event,
    EventKind,
    Overheads,
    Sim,
    Stream,
    overheads_of,
    settled,
)
from runtime.errors import UserError
from runtime.inventory import device_bytes_by_dtype, side_device_bytes
from runtime.plan import CastMode, HostMemory
from runtime.schedule import ring_bytes, ring_of
from runtime.tiers import align

DEFAULT_STEPS = 4  # simulated steps at least; the last one is the steady state reported
MAX_STEPS = 8


@dataclasses.dataclass(frozen=True)
class Layout:
    """What the cost model needs of a plan: per block (execution order) streamed or not and
    its cast mode, the prefetch depth and the host memory kind."""

    streamed: tuple[bool, ...]
    casts: tuple[CastMode, ...]
    depth: int
    host_memory: HostMemory
    # per block, True where a streamed block lives on the disk tier; () for none on disk
    on_disk: tuple[bool, ...] = ()

    @classmethod
    def uniform(cls, streamed, cast: CastMode, depth: int, host_memory: HostMemory) -> "Layout":
        streamed = tuple(bool(s) for s in streamed)
        return cls(streamed, (cast,) * len(streamed), depth, host_memory)


@dataclasses.dataclass(frozen=True)
class Prediction:
    step_ms: float  # steady-state time of one step (the last simulated step)
    peak_vram_bytes: int
    device_weight_bytes: int
    lower_bound_ms: float  # the real floor at the budget (planner.floor)
    timeline: tuple[Event, ...]  # one steady step, both streams
    synchronized_step_ms: float  # one step with the device synchronised around every forward


class CostModel:
    """Precomputed per-block durations and bytes for one inventory and one profile."""

    def __init__(self, inventory, profile, overheads: Overheads | None = None) -> None:
        check_same_blocks(inventory, profile)
        self.inventory = inventory
        self.profile = profile
        self.overheads = overheads_of(profile) if overheads is None else overheads
        self.names = tuple(b.name for b in inventory.blocks)
        self.forwards = profile.workload.forwards_per_step
        self.fp8 = inventory.storage_dtype.casts  # fp8 or quantized: a cast (dequantization) per use
        self.fixed_bytes = (
            inventory.non_block_device_bytes + profile.activation_peak_bytes + profile.workspace_bytes
        )
        self.available_bytes = reserve.available_bytes(profile)  # what the card gives the allocator
        bw = profile.bandwidth
        self._gbps = {HostMemory.PINNED: bw.pinned_under_compute_gbps, HostMemory.PAGEABLE: bw.pageable_gbps}
        self.best_gbps = max(self._gbps.values())
        self.dev = {  # cast -> per block {dtype: bytes} on the device
            cast: tuple(device_bytes_by_dtype(b, cast_on_host=cast is CastMode.PRE,
                                              compute=compute_dtype(inventory.storage_dtype))
                        for b in inventory.blocks)
            for cast in CastMode
        }
        self.dev_total = {cast: tuple(sum(d.values()) for d in groups) for cast, groups in self.dev.items()}
        self.compute = tuple(b.compute_ms for b in profile.blocks)
        self.side = tuple(side_device_bytes(b) for b in inventory.blocks)
        # a mixed plan's blocks stored in their own format (fp8, quantized) convert too
        self.cast_ms = tuple(
            p.cast_ms if self.fp8 or any(DType(d).casts for d in b.bytes_by_dtype) else 0.0
            for p, b in zip(profile.blocks, inventory.blocks)
        )
        self.copy = {
            (cast, host): tuple(
                bw.copy_overhead_us / 1000.0 * sum(1 for v in self.dev[cast][i].values() if v)
                + self.dev_total[cast][i] / (self._gbps[host] * 1e6)
                for i in range(len(self.names))
            )
            for cast in CastMode
            for host in HostMemory
        }

    # ------------------------------------------------------------ memory

    def device_weight_bytes(self, layout: Layout) -> int:
        self._check(layout)
        resident = sum(
            self.dev_total[c][i] for i, (s, c) in enumerate(zip(layout.streamed, layout.casts)) if not s
        )
        streamed = [self.dev[c][i] for i, (s, c) in enumerate(zip(layout.streamed, layout.casts)) if s]
        ring = ring_bytes(ring_of(list(layout.streamed), layout.depth), streamed) if streamed else 0
        # NF4 streamed with `auto`: the absmax stays on the device beside the ring (quant state)
        side = sum(self.side[i] for i, (s, c) in enumerate(zip(layout.streamed, layout.casts))
                   if s and c is CastMode.AUTO)
        return resident + self.inventory.non_block_device_bytes + ring + side

    def usable_bytes(self, budget_bytes: int) -> int:
        """What a plan's peak may reach within `budget_bytes` on this card (`planner.reserve`)."""
        return reserve.usable_bytes(budget_bytes, self.available_bytes)

    def budget_needed(self, peak_bytes: int) -> int | None:
        """The smallest budget a plan of `peak_bytes` fits, or None where this card cannot."""
        return reserve.budget_needed(peak_bytes, self.available_bytes)

    def peak_bytes(self, layout: Layout) -> int:
        return self.device_weight_bytes(layout) - self.inventory.non_block_device_bytes + self.fixed_bytes

    # ------------------------------------------------------------ time

    def block_compute_ms(self, i: int, cast: CastMode) -> float:
        return self.compute[i] + (self.cast_ms[i] if cast is CastMode.AUTO else 0.0)

    def copy_ms(self, i: int, cast: CastMode, host: HostMemory) -> float:
        return self.copy[(cast, host)][i]

    def step_ms(self, layout: Layout) -> float:
        return self._simulate(layout, record=False)[0]

    def predict(self, layout: Layout, budget_bytes: int | None = None, disk_floor_bytes: int = 0) -> Prediction:
        """Step time, memory and timeline of `layout`; the lower bound is taken at
        `budget_bytes`, or at the layout's own peak when no budget is given, and is no lower
        than reading `disk_floor_bytes` (the fewest any plan within the host RAM budget keeps
        on the disk tier) once per forward."""
        step, timeline = self._simulate(layout, record=True)
        weights = self.device_weight_bytes(layout)
        peak = weights - self.inventory.non_block_device_bytes + self.fixed_bytes
        bound = max(self.lower_bound_ms(peak if budget_bytes is None else budget_bytes),
                    self.disk_floor_ms(disk_floor_bytes))
        return Prediction(step, peak, weights, bound, timeline, self.synchronized_step_ms(layout))

    def lower_bound_ms(self, budget_bytes: int) -> float:
        """The real floor at `budget_bytes`: no placement, cast choice or depth the engine can
        run within the budget steps faster (`planner.floor`)."""
        from planner.floor import floor_ms, groups_of

        groups = groups_of(self.dev_total[CastMode.PRE], self.dev_total[CastMode.AUTO], self.cast_ms)
        compute = self.profile.non_block_ms + sum(self.compute)
        # below the smallest plan's need, the floor of the smallest plan (everything streamed)
        room = max(self.usable_bytes(budget_bytes) - self.fixed_bytes, max(g.auto_bytes for g in groups))
        return floor_ms(groups, compute, room, self.best_gbps, self.forwards)

    def cast_modes(self) -> tuple[CastMode, ...]:
        return (CastMode.PRE, CastMode.AUTO) if self.fp8 else (CastMode.PRE,)

    # ------------------------------------------------------------ simulation

    def _check(self, layout: Layout) -> None:
        if len(layout.streamed) != len(self.names) or len(layout.casts) != len(self.names):
            raise UserError(
                f"a layout of {len(layout.streamed)} blocks does not fit {self.inventory.model_id}, "
                f"which has {len(self.names)}: give one entry per block"
            )
        if not 1 <= layout.depth <= 16:
            raise UserError(f"prefetch depth {layout.depth} is out of range: give 1 to 16")

    def _durations(self, layout: Layout):
        self._check(layout)
        comp = [self.block_compute_ms(i, c) for i, c in enumerate(layout.casts)]
        copy = [self.copy_ms(i, c, layout.host_memory) for i, c in enumerate(layout.casts)]
        on_disk = layout.on_disk or (False,) * len(self.names)
        reads = [self.read_ms(i, c) if d and s else None
                 for i, (s, c, d) in enumerate(zip(layout.streamed, layout.casts, on_disk))]
        return comp, copy, _ring(layout.streamed, layout.depth), reads

    def read_ms(self, i: int, cast: CastMode) -> float:
        """Reading block `i` from the disk tier, as the reader reads it (aligned extent)."""
        return align(self.dev_total[cast][i]) / (self.profile.bandwidth.disk_gbps * 1e6)

    def disk_floor_ms(self, disk_bytes: int) -> float:
        """A step reads `disk_bytes` from the disk tier once per forward: no faster than that."""
        return disk_bytes / (self.profile.bandwidth.disk_gbps * 1e6) * self.forwards

    def _forward(self, sim: "Sim", layout: Layout, q: int, durations, step: int) -> None:
        """Forward `q` (counted across steps) on both streams, from the cursors where they are.

        The ring's rule is `runtime.schedule`'s: which use a block is, which use is copied once
        its compute is enqueued and into which block; this only adds the durations."""
        comp, copy, ring, reads = durations
        pageable = layout.host_memory is HostMemory.PAGEABLE
        sim.compute(NON_BLOCK, self.profile.non_block_ms, 0.0, 0.0, step)
        for i, uses in enumerate(ring.step_uses(q)):
            if uses is None:
                sim.compute(i, comp[i], 0.0, comp[i] - self.compute[i], step)
                continue
            g, nxt, block = uses
            end = sim.compute(i, comp[i], sim.copy_done.pop(g), comp[i] - self.compute[i], step)
            sim.copy(nxt, block, copy[block], sim.read(reads[block], end), step)
            if pageable:
                sim.host_waits_copy()

    def _initial_copies(self, sim: "Sim", layout: Layout, durations) -> None:
        _, copy, ring, reads = durations
        for g in ring.initial_copies():  # before the first step
            block = ring.block_of_use(g)
            sim.copy(g, block, copy[block], sim.read(reads[block], 0.0), step=-1)
        if layout.host_memory is HostMemory.PAGEABLE:
            sim.host_waits_copy()

    def _simulate(self, layout: Layout, record: bool) -> tuple[float, tuple[Event, ...]]:
        durations = self._durations(layout)
        sim = Sim(record, self.overheads)
        self._initial_copies(sim, layout, durations)
        ends = [0.0]
        step = 0
        while step < DEFAULT_STEPS or (step < MAX_STEPS and not settled(ends)):
            for f in range(self.forwards):
                self._forward(sim, layout, step * self.forwards + f, durations, step)
            ends.append(sim.t_comp)
            step += 1
        step_ms = ends[-1] - ends[-2]
        if not record:
            return step_ms, ()
        return step_ms, sim.timeline(step - 1, ends[-2], self.names)

    def synchronized_step_ms(self, layout: Layout) -> float:
        """One step when the device is synchronised before and after every forward.

        That is how a benchmark times forwards with a host clock (`torch.cuda.synchronize()`
        around each). The engine runs the same schedule, but each forward starts with both
        streams idle and its first `slots` streamed blocks already in the ring (the previous
        forward's wrap-around prefetch finished inside the previous synchronize), and it ends
        when both streams are done: the synchronize also waits for this forward's own
        wrap-around copies of the next forward's first blocks, which in a denoising loop run
        under the next forward's compute instead. A deeper ring prefetches more of those
        blocks at the tail of the forward, so here a deeper ring can be slower. The host
        starts each forward from the synchronize, `forward_start_us` behind the device.
        """
        durations = self._durations(layout)
        ring = durations[2]
        total = 0.0
        for f in range(self.forwards):
            sim = Sim(False, self.overheads)
            sim.t_host = self.overheads.forward_start_us / 1000.0
            sim.copy_done = {use: 0.0 for use in ring.prefetched(f)}
            self._forward(sim, layout, f, durations, 0)
            total += max(sim.t_comp, sim.t_copy)
        return total


@functools.lru_cache(maxsize=1024)
def _ring(streamed: tuple[bool, ...], depth: int):
    """The schedule of one placement and depth (the search asks for the same ones often)."""
    return ring_of(list(streamed), depth)


def check_same_blocks(inventory, profile) -> None:
    """The profile must describe the inventory's blocks: same model, dtype, names and bytes."""
    what = f"profile {profile.id}" if profile.id is not None else f"the profile ({profile.source})"
    fix = (
        f"profile {inventory.model_id} in {inventory.storage_dtype.value} again "
        f"(planner profile --model {inventory.model_id}) or pick the matching profile"
    )
    if profile.model_id != inventory.model_id or profile.storage_dtype != inventory.storage_dtype:
        raise UserError(
            f"{what} is for {profile.model_id} in {profile.storage_dtype.value}, not "
            f"{inventory.model_id} in {inventory.storage_dtype.value}: {fix}"
        )
    ours = [(b.name, b.kind, b.bytes) for b in inventory.blocks]
    theirs = [(b.name, b.kind, b.bytes) for b in profile.blocks]
    if ours != theirs:
        raise UserError(f"{what} does not describe the same blocks as {inventory.model_id}: {fix}")


def predict(inventory, profile, layout: Layout, budget_bytes: int | None = None) -> Prediction:
    """Predicted steady step time, peak VRAM and timeline of `layout` under `profile`."""
    return CostModel(inventory, profile).predict(layout, budget_bytes)
