"""The ring of device slots, executing `runtime.schedule.RingSchedule` exactly.

Use `g` of a streamed block sits in slot `g % slots`. Copies of uses 0..slots-1 are issued
when the ring starts; compute of use `g` waits on its copy's event; once compute of `g` is
enqueued, the copy of use `g + slots` is issued on the one copy stream after an event recorded
behind compute of `g` (the slot is free). The use counter runs on across forwards, so the tail
of one forward prefetches the head of the next. A block asked for out of turn (a forward that
raised, a partial forward) makes the ring synchronise and restart at that block.

On CPU the copies are synchronous and the events are no-ops, through the same code.
"""

from __future__ import annotations

import torch

from runtime.engine import packing
from runtime.schedule import RingSchedule


class _CpuSync:
    """Copies run in order on the caller's thread; nothing to wait for."""

    def copy_context(self):
        import contextlib

        return contextlib.nullcontext()

    def record_copy(self, slot: int) -> None:
        pass

    def compute_waits_copy(self, slot: int) -> None:
        pass

    def record_compute(self, slot: int) -> None:
        pass

    def copy_waits_compute(self, slot: int) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def staging_done(self):
        return None  # CPU copies are done when they return


class _CudaSync:
    """One side copy stream; per slot, the event of its last copy and of its last compute."""

    def __init__(self, device: torch.device, slots: int) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        self.copied = [torch.cuda.Event() for _ in range(slots)]
        self.computed = [torch.cuda.Event() for _ in range(slots)]
        self.has_computed = [False] * slots

    def copy_context(self):
        return torch.cuda.stream(self.stream)

    def record_copy(self, slot: int) -> None:
        self.copied[slot].record(self.stream)

    def compute_waits_copy(self, slot: int) -> None:
        torch.cuda.current_stream(self.device).wait_event(self.copied[slot])

    def record_compute(self, slot: int) -> None:
        self.computed[slot].record(torch.cuda.current_stream(self.device))
        self.has_computed[slot] = True

    def copy_waits_compute(self, slot: int) -> None:
        if self.has_computed[slot]:
            self.stream.wait_event(self.computed[slot])

    def staging_done(self) -> torch.cuda.Event:
        """An event behind the copies enqueued so far (a disk-tier staging buffer's copy)."""
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def synchronize(self) -> None:
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
        slot_numel: dict[str, int] = {}
        for layout in layouts:
            for group, numel in layout.numel_by_group.items():
                slot_numel[group] = max(slot_numel.get(group, 0), numel)
        self.slot_buffers = [
            packing.empty_group_buffers(slot_numel, self.device) for _ in range(schedule.slots)
        ]
        self.slot_views = [
            [packing.views(layout, slot) for slot in self.slot_buffers] for layout in layouts
        ]
        cuda = self.device.type == "cuda"
        self.sync = _CudaSync(self.device, schedule.slots) if cuda else _CpuSync()
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
            for group, host in source.items():
                self.slot_buffers[slot][group].narrow(0, 0, host.numel()).copy_(
                    host, non_blocking=True
                )
            self.sync.record_copy(slot)
            if on_disk:
                self.disk.release(self.sync.staging_done())

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
        self.sync.compute_waits_copy(slot)
        packing.bind(self.layouts[j], self.slot_views[j][slot])

    def after(self, j: int) -> None:
        """Block `j`'s compute is enqueued: free its slot behind it, prefetch, point it home."""
        use = self.next_use
        slot = self.schedule.slot(use)
        self.sync.record_compute(slot)
        self._issue_copy(self.schedule.copy_after(use))
        self.next_use = use + 1
        packing.bind(self.layouts[j], self.host_views[j])

    def close(self) -> None:
        self.sync.synchronize()
        if self.disk is not None:
            self.disk.close()
            self.disk = None
        self.slot_buffers = []
        self.slot_views = []
