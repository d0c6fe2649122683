"""The structured search space: candidates the runtime can execute, and their placements.

A candidate says how many blocks of each kind stay resident and where (a pattern applied
within each kind's run of blocks), the cast modes (only for fp8 storage), the prefetch depth,
the host memory kind and, for models run with classifier-free guidance, how CFG is batched.

Casts are chosen per block in two groups. Streamed blocks all use `cast`: `auto` sends fp8
over the bus and casts on the GPU, `pre` sends bf16 (twice the bytes, no cast). Resident
blocks use `resident_cast`: `pre` keeps them in bf16 (twice the VRAM, no cast per step);
`auto` keeps them in fp8 and casts every step, except the first `precast` of them (execution
order), which are pre-cast after all because the VRAM left over holds them in bf16: the search
sets `precast` to the most that fit, so fp8 residents cost a cast only where VRAM is short.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
from typing import Iterator

from planner.costmodel import Layout
from runtime.errors import UserError
from runtime.plan import CastMode, HostMemory
from runtime.workload import CfgMode

DEPTHS = (1, 2, 3, 4)


class Pattern(str, enum.Enum):
    SPREAD = "spread"  # residents evenly spaced, so every transfer has compute to hide behind
    PREFIX = "prefix"  # the first blocks of each kind stay resident
    SUFFIX = "suffix"  # the last blocks of each kind stay resident
    EXPLICIT = "explicit"  # a given set of streamed blocks (a plan read from a file)


@dataclasses.dataclass(frozen=True)
class Candidate:
    resident: tuple[tuple[str, int], ...]  # (kind, resident count), kinds in execution order
    pattern: Pattern
    depth: int
    cast: CastMode
    host_memory: HostMemory
    cfg: CfgMode = CfgMode.NONE
    explicit: tuple[bool, ...] | None = None  # streamed flags, for Pattern.EXPLICIT only
    resident_cast: CastMode | None = None  # None: the same as `cast`
    precast: int = 0  # with resident_cast auto: the first this many residents are pre-cast

    @property
    def cast_of_resident(self) -> CastMode:
        return self.cast if self.resident_cast is None else self.resident_cast

    def count(self, kind: str) -> int:
        return dict(self.resident)[kind]

    def to_dict(self) -> dict:
        out = {
            "resident": dict(self.resident),
            "pattern": self.pattern.value,
            "depth": self.depth,
            "cast": self.cast.value,
            "resident_cast": self.cast_of_resident.value,
            "precast": self.precast,
            "host_memory": self.host_memory.value,
            "cfg": self.cfg.value,
        }
        if self.explicit is not None:
            out["streamed"] = [i for i, s in enumerate(self.explicit) if s]
        return out

    def describe(self) -> str:
        counts = ", ".join(f"{n} {k}" for k, n in self.resident)
        casts = self.cast.value
        if self.cast_of_resident is not self.cast or self.precast:
            casts = f"streamed {self.cast.value}, resident {self.cast_of_resident.value}"
            casts += f" ({self.precast} pre-cast)" if self.precast else ""
        return f"resident {counts} ({self.pattern.value}), depth {self.depth}, {casts}, {self.host_memory.value}"


@dataclasses.dataclass(frozen=True)
class KindRun:
    kind: str
    positions: tuple[int, ...]  # execution positions of this kind's blocks
    block_bytes: int  # largest block of the kind (storage bytes)


@dataclasses.dataclass(frozen=True)
class Space:
    kinds: tuple[KindRun, ...]
    num_blocks: int
    casts: tuple[CastMode, ...]
    hosts: tuple[HostMemory, ...]
    depths: tuple[int, ...]
    cfgs: tuple[CfgMode, ...]
    # storage bytes of every block in execution order: blocks of one kind may differ in size
    # (SD3's context-pre-only last block, SD3.5 Medium's dual-attention blocks)
    block_bytes: tuple[int, ...] = ()

    @property
    def fill_kind(self) -> str:
        """The kind with the most (then the smallest) blocks: the finest step of residency."""
        return max(self.kinds, key=lambda k: (len(k.positions), -k.block_bytes)).kind

    def kind(self, name: str) -> KindRun:
        for run in self.kinds:
            if run.kind == name:
                return run
        raise KeyError(name)

    def streamed_flags(self, c: Candidate) -> tuple[bool, ...]:
        if c.pattern is Pattern.EXPLICIT:
            assert c.explicit is not None and len(c.explicit) == self.num_blocks
            return c.explicit
        flags = [True] * self.num_blocks
        for run in self.kinds:
            for k in resident_indices(len(run.positions), c.count(run.kind), c.pattern):
                flags[run.positions[k]] = False
        return tuple(flags)

    def layout(self, c: Candidate) -> Layout:
        streamed = self.streamed_flags(c)
        casts, seen = [], 0
        for s in streamed:
            if s:
                casts.append(c.cast)
            else:
                casts.append(CastMode.PRE if seen < c.precast else c.cast_of_resident)
                seen += 1
        return Layout(streamed, tuple(casts), c.depth, c.host_memory)

    def candidate(self, counts: dict[str, int], pattern: Pattern, depth: int, cast: CastMode,
                  host: HostMemory, cfg: CfgMode, resident_cast: CastMode | None = None,
                  precast: int = 0) -> Candidate:
        resident = tuple((run.kind, counts[run.kind]) for run in self.kinds)
        if all(n in (0, len(self.kind(k).positions)) for k, n in resident):
            pattern = Pattern.PREFIX  # where every kind is all-or-nothing, patterns coincide
        total = sum(n for _, n in resident)
        rcast = resident_cast or cast
        if total == 0:  # nothing resident: only the streamed cast matters
            rcast, precast = cast, 0
        if rcast is CastMode.PRE:
            precast = 0
        precast = max(0, min(precast, total))
        if precast == total and total:  # every resident pre-cast after all
            rcast, precast = CastMode.PRE, 0
        if total == self.num_blocks:  # nothing streams: only the residents' cast matters
            cast = rcast
        resident_cast = None if rcast is cast else rcast
        return Candidate(resident, pattern, depth, cast, host, cfg, None, resident_cast, precast)

    def enumerate(self) -> Iterator[Candidate]:
        """Every distinct candidate of the space (patterns folded where they coincide)."""
        seen = set()
        ranges = [range(len(run.positions) + 1) for run in self.kinds]
        for counts in itertools.product(*ranges):
            named = dict(zip((r.kind for r in self.kinds), counts))
            for pattern in (Pattern.SPREAD, Pattern.PREFIX, Pattern.SUFFIX):
                for depth, cast, rcast, host, cfg in itertools.product(
                    self.depths, self.casts, self.casts, self.hosts, self.cfgs
                ):
                    c = self.candidate(named, pattern, depth, cast, host, cfg, rcast)
                    if c not in seen:
                        seen.add(c)
                        yield c

    def size(self) -> int:
        return sum(1 for _ in self.enumerate())


def resident_indices(n: int, r: int, pattern: Pattern) -> tuple[int, ...]:
    """Which of `n` blocks (0..n-1) of one kind stay resident when `r` do."""
    if not 0 <= r <= n:
        raise UserError(f"{r} resident blocks of a kind with {n} blocks is impossible: give 0 to {n}")
    if pattern is Pattern.PREFIX:
        return tuple(range(r))
    if pattern is Pattern.SUFFIX:
        return tuple(range(n - r, n))
    if pattern is Pattern.SPREAD:
        # centred and evenly spaced: block floor((k + 1/2) n / r) for k = 0..r-1 (distinct)
        return tuple((2 * k + 1) * n // (2 * r) for k in range(r))
    raise ValueError(f"pattern {pattern} places no counts")


def space_of(inventory, cfgs: tuple[CfgMode, ...] = (CfgMode.NONE,), depths=DEPTHS) -> Space:
    runs: dict[str, list] = {}
    for b in inventory.blocks:
        runs.setdefault(b.kind, []).append(b)
    kinds = tuple(
        KindRun(kind, tuple(b.index for b in blocks), max(b.bytes for b in blocks))
        for kind, blocks in runs.items()
    )
    casts = (CastMode.PRE, CastMode.AUTO) if inventory.storage_dtype.casts else (CastMode.PRE,)
    return Space(
        kinds=kinds,
        num_blocks=len(inventory.blocks),
        casts=casts,
        hosts=(HostMemory.PINNED, HostMemory.PAGEABLE),
        depths=tuple(depths),
        cfgs=tuple(cfgs),
        block_bytes=tuple(b.bytes for b in inventory.blocks),
    )


def explicit_candidate(space: Space, streamed: tuple[bool, ...], depth: int, cast: CastMode,
                       host: HostMemory, cfg: CfgMode = CfgMode.NONE) -> Candidate:
    """A candidate for a given set of streamed blocks (e.g. a plan from a file)."""
    resident = tuple(
        (run.kind, sum(1 for p in run.positions if not streamed[p])) for run in space.kinds
    )
    return Candidate(resident, Pattern.EXPLICIT, depth, cast, host, cfg, tuple(streamed))
