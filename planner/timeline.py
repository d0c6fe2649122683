"""The cost model's two streams in time: the simulation cursors and the events they record,
and the overheads the stream durations alone leave out (see `planner.costmodel`)."""

from __future__ import annotations

import dataclasses
import enum

from runtime.tiers import DEFAULT_STAGING

NON_BLOCK = "non-block"


class Stream(str, enum.Enum):
    COPY = "copy"
    COMPUTE = "compute"


class EventKind(str, enum.Enum):
    COPY = "copy"
    COMPUTE = "compute"
    CAST = "cast"


@dataclasses.dataclass(frozen=True)
class Event:
    """One interval on one stream, in ms from the start of the steady step."""

    stream: Stream
    start_ms: float
    end_ms: float
    block: str
    kind: EventKind


@dataclasses.dataclass(frozen=True)
class Overheads:
    """What the two streams' durations leave out, in microseconds (see the module docstring)."""

    event_wait_us: float = 0.0  # a stream blocked on the other's event resumes this long after it
    host_block_us: float = 0.0  # host time to enqueue one block; the device cannot run ahead of it
    forward_start_us: float = 0.0  # after a synchronize: host time before the first kernel is queued


NO_OVERHEADS = Overheads()
# From the H100 traces (bench/replay_h100.py derives each from ../shared/gpu-evidence/
# h100-2026-11-22; bench/results/replay_h100.json records them): the median gap between a copy's
# end and the first kernel of a compute stream that was waiting for it (trace_plan8_depth2,
# copy-bound, 45 waits); the CUDA runtime calls' host time per block of a forward
# (trace_plan16_depth2, 34.3 ms / 57 blocks: what the host spends in launches alone, the Python
# around them not counted); the host time from a forward's first operator to its first kernel
# (trace_plan8_depth2, the host not behind). The profiler's callbacks stretch the last two, so
# they are upper estimates of those parts and lower ones of the whole host path.
CUDA_OVERHEADS = Overheads(event_wait_us=7.6, host_block_us=601.0, forward_start_us=695.0)


def overheads_of(profile) -> Overheads:
    """A CUDA device's stream latencies and launch cost; none where the profile's device runs
    each operation as the host calls it (the CPU)."""
    return NO_OVERHEADS if profile.device == "cpu" else CUDA_OVERHEADS


def settled(ends: list[float]) -> bool:
    a, b = ends[-1] - ends[-2], ends[-2] - ends[-3]
    return abs(a - b) <= 1e-9 * max(1.0, a)


class Sim:
    """Stream cursors, the host's enqueue cursor and, when recording, raw events (step, stream,
    start, end, block, kind). The host enqueues blocks one after another (`host_block_us`
    each); a block's compute starts no earlier than the host began it and ends no earlier than
    the host finished it, and the copy issued after a block's compute starts no earlier than
    that. A stream waiting on the other stream's event resumes `event_wait_us` after it."""

    def __init__(self, record: bool, overheads: "Overheads") -> None:
        self.t_comp = 0.0
        self.t_copy = 0.0
        self.t_host = 0.0
        self.copy_done: dict[int, float] = {}
        self.record = record
        self.events: list[tuple] = []
        self.wait = overheads.event_wait_us / 1000.0
        self.host = overheads.host_block_us / 1000.0
        self.t_disk = 0.0  # the disk reader's cursor
        self.staging: list[float] = []  # per disk read, when its staging buffer is free again
        self._reading: int | None = None  # the read whose buffer the next copy empties

    def read(self, duration: float | None, ready: float) -> float:
        """When the next copy may start: `ready`, or later where it copies a disk-tier block
        (`duration`, None otherwise) whose read ends later. The reader reads ahead into
        DEFAULT_STAGING buffers; a buffer is free once the copy out of it ended."""
        if duration is None:
            return ready
        k = len(self.staging)
        free = self.staging[k - DEFAULT_STAGING] if k >= DEFAULT_STAGING else 0.0
        self.t_disk = max(self.t_disk, free) + duration
        self.staging.append(float("inf"))  # set by the copy (`copy`) once it is simulated
        self._reading = k
        return max(ready, self.t_disk)

    def host_waits_copy(self) -> None:
        """A pageable copy blocks the host, hence what it enqueues next, until it is done."""
        self.t_comp = max(self.t_comp, self.t_copy)
        self.t_host = max(self.t_host, self.t_copy)

    def copy(self, use: int, block: int, duration: float, ready: float, step: int) -> None:
        free = self.t_copy if self.t_copy > self.t_host else self.t_host  # max(), without a call
        start = ready + self.wait if ready > free else free
        self.t_copy = start + duration
        self.copy_done[use] = self.t_copy
        if self._reading is not None:  # a staging buffer's copy: free after it
            self.staging[self._reading] = self.t_copy
            self._reading = None
        if self.record:
            self.events.append((step, Stream.COPY, start, self.t_copy, block, EventKind.COPY))

    def compute(self, block, duration: float, ready: float, cast: float, step: int) -> float:
        free = self.t_comp if self.t_comp > self.t_host else self.t_host
        start = ready + self.wait if ready > free else free
        self.t_host += self.host
        end = start + duration
        self.t_comp = end if end > self.t_host else self.t_host
        if self.record:
            if cast > 0:
                self.events.append((step, Stream.COMPUTE, start, start + cast, block, EventKind.CAST))
            self.events.append((step, Stream.COMPUTE, start + cast, self.t_comp, block, EventKind.COMPUTE))
        return self.t_comp

    def timeline(self, step: int, origin: float, names: tuple[str, ...]) -> tuple[Event, ...]:
        """Events of `step`, plus copies of earlier steps still running when it starts."""
        out = []
        for s, stream, start, end, block, kind in self.events:
            if s == step or (stream is Stream.COPY and s < step and end > origin):
                name = block if isinstance(block, str) else names[block]
                out.append(Event(stream, start - origin, end - origin, name, kind))
        return tuple(out)
