"""The ring of device slots, executing `runtime.schedule.RingSchedule` exactly.

Use `g` of a streamed block sits in slot `g % slots`. The slots are allocated on the compute
stream, and the copy stream waits for it before it first writes them. Copies of uses
0..slots-1 are issued when the ring starts; compute of use `g` waits on its copy's event; once compute of `g` is
enqueued, the copy of use `g + slots` is issued on the one copy stream after an event recorded
behind compute of `g` (the slot is free). The use counter runs on across forwards, so the tail
of one forward prefetches the head of the next. A block asked for out of turn (a forward that
raised, a partial forward) makes the ring synchronise and restart at that block.

On CPU the copies are synchronous and the events are no-ops, through the same code. Every
stream operation goes through the `_Sync` seam, which notes it where a test records them
(`recording_stream_ops`; `runtime.schedule.ordering_violations` checks the order).
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

from runtime.engine import host_memory, packing
from runtime.schedule import Op, RingSchedule, StreamOp


_RECORDING: contextvars.ContextVar[list | None] = contextvars.ContextVar("ring_ops", default=None)


@contextlib.contextmanager
def recording_stream_ops():
    """Within the block, every ring notes its stream operations (`runtime.schedule.StreamOp`)
    into the list yielded, in the order it makes them; `schedule.ordering_violations` checks
    them. The same calls are made on CPU, where they wait for nothing."""
    ops: list[StreamOp] = []
    token = _RECORDING.set(ops)
    try:
        yield ops
    finally:
        _RECORDING.reset(token)


class _Sync:
    """The seam between the ring and the streams: every stream operation the ring makes, noted
    when recording. Per slot, the use whose compute event was recorded last: a slot whose
    previous user never computed (a fresh slot) has no event to wait for."""

    def __init__(self, slots: int) -> None:
        self.computed: list[int | None] = [None] * slots
        self._note(Op.ALLOCATED)

    def _note(self, op: Op, slot: int | None = None, use: int | None = None) -> None:
        ops = _RECORDING.get()
        if ops is not None:
            ops.append(StreamOp(op, slot, use))

    def copy_waits_allocation(self) -> None:
        """The slots were allocated on the compute stream: the first copies into them wait."""
        self._note(Op.COPY_WAITS_ALLOCATION)
        self._wait_allocation()

    def copy_waits_compute(self, slot: int) -> None:
        if self.computed[slot] is not None:
            self._note(Op.COPY_WAITS_COMPUTE, slot, self.computed[slot])
            self._wait_compute(slot)

    def copied(self, slot: int, use: int) -> None:
        """The copy of `use` into `slot` was issued (inside `copy_context`)."""
        self._note(Op.COPY, slot, use)

    def record_copy(self, slot: int, use: int) -> None:
        self._note(Op.COPY_RECORDED, slot, use)
        self._record_copy(slot)

    def reads(self, sources, slot: int) -> None:
        """The copy just recorded into `slot` read the host buffers `sources`."""

    def compute_waits_copy(self, slot: int, use: int) -> None:
        self._note(Op.COMPUTE_WAITS_COPY, slot, use)
        self._wait_copy(slot)

    def record_compute(self, slot: int, use: int) -> None:
        self._note(Op.COMPUTE_RECORDED, slot, use)
        self.computed[slot] = use
        self._record_compute(slot)

    def synchronize(self) -> None:
        self._note(Op.SYNCHRONIZE)
        self._synchronize()


class _CpuSync(_Sync):
    """Copies run in order on the caller's thread; nothing to wait for."""

    def copy_context(self):
        return contextlib.nullcontext()

    def _wait_allocation(self) -> None:
        pass

    def _wait_compute(self, slot: int) -> None:
        pass

    def _record_copy(self, slot: int) -> None:
        pass

    def _wait_copy(self, slot: int) -> None:
        pass

    def _record_compute(self, slot: int) -> None:
        pass

    def _synchronize(self) -> None:
        pass

    def staging_done(self):
        return None  # CPU copies are done when they return


class _CudaSync(_Sync):
    """One side copy stream; per slot, the event of its last copy and of its last compute."""

    def __init__(self, device: torch.device, slots: int) -> None:
        super().__init__(slots)
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        self.copied_events = [torch.cuda.Event() for _ in range(slots)]
        self.computed_events = [torch.cuda.Event() for _ in range(slots)]

    def copy_context(self):
        return torch.cuda.stream(self.stream)

    def _wait_allocation(self) -> None:
        # the caching allocator gave the slots to the compute stream: memory it freed there
        # may still be read by kernels queued on it
        self.stream.wait_stream(torch.cuda.current_stream(self.device))

    def _wait_compute(self, slot: int) -> None:
        self.stream.wait_event(self.computed_events[slot])

    def _record_copy(self, slot: int) -> None:
        self.copied_events[slot].record(self.stream)

    def staging_done(self) -> torch.cuda.Event:
        """An event behind the copies enqueued so far (a disk-tier staging buffer's copy)."""
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def reads(self, sources, slot: int) -> None:
        for source in sources:  # a page-locked mapping is not unregistered before this copy ends
            host_memory.note_read(source, self.copied_events[slot])

    def _wait_copy(self, slot: int) -> None:
        torch.cuda.current_stream(self.device).wait_event(self.copied_events[slot])

    def _record_compute(self, slot: int) -> None:
        self.computed_events[slot].record(torch.cuda.current_stream(self.device))

    def _synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


class Ring:
    """Slots on the device and the use counter; `before`/`after` wrap each streamed block."""

    def __init__(self, schedule: RingSchedule, layouts, host_buffers, host_views, device, disk=None):
        self.schedule = schedule
        self.layouts = layouts  # per streamed block (j), its packing.Layout
        # per j: {group: flat host tensor}; None for a disk-tier block, which `disk` (a
        # runtime.engine.disk_tier.DiskReader) reads into a staging buffer for each copy
        self.host_buffers = host_buffers
        self.disk = disk
        self.host_views = host_views  # per j: views of the host pack, one per entry
        self.device = torch.device(device)
        # on the CPU each block's views sit as far past a 64-byte line as its tensors did
        # (packing.Layout.phase); a CUDA plain model's tensors are fresh, aligned allocations
        phases = [layout.phase if self.device.type == "cpu" else {} for layout in layouts]
        slot_numel: dict[str, int] = {}
        for layout, phase in zip(layouts, phases):
            for group, numel in layout.numel_by_group.items():
                slot_numel[group] = max(slot_numel.get(group, 0), numel + phase.get(group, 0))
        self.slot_buffers = [
            packing.empty_group_buffers(slot_numel, self.device) for _ in range(schedule.slots)
        ]
        # per j, per slot: {group: where block j's bytes go in that slot}, and the views there
        self.slot_targets = [
            [{group: slot[group].narrow(0, phase.get(group, 0), numel)
              for group, numel in layout.numel_by_group.items()} for slot in self.slot_buffers]
            for layout, phase in zip(layouts, phases)
        ]
        self.slot_views = [
            [packing.views(layout, target) for target in targets]
            for layout, targets in zip(layouts, self.slot_targets)
        ]
        cuda = self.device.type == "cuda"
        self.sync = _CudaSync(self.device, schedule.slots) if cuda else _CpuSync(schedule.slots)
        self.sync.copy_waits_allocation()
        self.next_use = 0
        self.resyncs = 0
        self._start(0)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self.slot_buffers for t in s.values())

    def _issue_copy(self, use: int) -> None:
        j = use % self.schedule.m
        slot = self.schedule.slot(use)
        with self.sync.copy_context():
            self.sync.copy_waits_compute(slot)
            on_disk = self.host_buffers[j] is None
            source = self.disk.take(j) if on_disk else self.host_buffers[j]
            target = self.slot_targets[j][slot]
            for group, host in source.items():
                target[group].narrow(0, 0, host.numel()).copy_(host, non_blocking=True)
            self.sync.copied(slot, use)
            self.sync.record_copy(slot, use)
            if on_disk:  # the reader waits for this before it reads into the buffer again
                self.disk.release(self.sync.staging_done())
            else:
                self.sync.reads(source.values(), slot)

    def _start(self, first_use: int) -> None:
        for k in self.schedule.initial_copies():
            self._issue_copy(first_use + k)
        self.next_use = first_use

    def _resync(self, j: int) -> None:
        """Out of turn: wait for everything, then restart the ring at streamed block `j`."""
        self.sync.synchronize()
        m = self.schedule.m
        self._start(self.next_use + (j - self.next_use) % m)
        self.resyncs += 1

    def before(self, j: int) -> None:
        """Streamed block `j` is about to run: wait for its copy, point it at its slot."""
        if self.next_use % self.schedule.m != j:
            self._resync(j)
        use = self.next_use
        slot = self.schedule.slot(use)
        self.sync.compute_waits_copy(slot, use)
        packing.bind(self.layouts[j], self.slot_views[j][slot])

    def after(self, j: int) -> None:
        """Block `j`'s compute is enqueued: free its slot behind it, prefetch, point it home."""
        use = self.next_use
        slot = self.schedule.slot(use)
        self.sync.record_compute(slot, use)
        self._issue_copy(self.schedule.copy_after(use))
        self.next_use = use + 1
        packing.bind(self.layouts[j], self.host_views[j])

    def close(self) -> None:
        self.sync.synchronize()
        if self.disk is not None:
            self.disk.close()
            self.disk = None
        host_memory.release_deferred()
        self.slot_buffers = []
        self.slot_targets = []
        self.slot_views = []
