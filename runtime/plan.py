"""Plan format v1: the strict, versioned data file users share.

A plan says, for one model at one workload on one target, where every block lives while the
model runs. It is data only: loading never executes or unpickles anything, every field is
checked, and `dump_plan(load_plan(text))` gives back the same text.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from pathlib import Path
from typing import Any, Mapping

from runtime.analysis.convert import FORMATS
from runtime.dtypes import DType
from runtime.errors import PlanFormatError
from runtime.strict_json import DuplicateKey, NonFiniteConstant, loads_strict
from runtime.workload import MAX_FRAMES, MAX_SIDE, CfgMode, Workload

FORMAT_VERSION = 1
MAX_PLAN_FILE_BYTES = 10 * 1024 * 1024
MAX_PREFETCH_DEPTH = 16
MAX_BLOCKS = 4096
MAX_BUDGET_BYTES = 1 << 50  # 1 PiB: anything beyond is a typo
MAX_EXPERTS = 7  # further experts a plan may place (Wan 2.2 A14B has one)
FIRST_EXPERT = "transformer"  # the pipeline attribute the plan's own placement is for


class Placement(str, enum.Enum):
    RESIDENT = "resident"  # weights live on the compute device for the whole run
    STREAMED = "streamed"  # weights live in host RAM and are copied into a ring slot per use


class CastMode(str, enum.Enum):
    PRE = "pre"  # host keeps the compute dtype; the device receives it ready to use
    AUTO = "auto"  # the device receives the storage dtype (fp8) and casts just in time


class Tier(str, enum.Enum):
    """Where a streamed block's host copy lives between its uses."""

    RAM = "ram"  # a pack in host RAM (pinned or pageable, as the plan's host_memory says)
    DISK = "disk"  # a pack file read each use with direct I/O into pinned staging buffers


class HostMemory(str, enum.Enum):
    PINNED = "pinned"
    PAGEABLE = "pageable"


@dataclasses.dataclass(frozen=True)
class ModelRef:
    id: str
    family: str
    storage_dtype: DType
    compute_dtype: DType


@dataclasses.dataclass(frozen=True)
class Target:
    gpu_name: str
    vram_budget_bytes: int


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    name: str
    kind: str
    bytes: int  # storage bytes of the block, checked against the model when applied
    placement: Placement
    cast: CastMode
    # quant types its tensors are stored in (GGUF q4_k..., nf4), sorted; () for plain storage.
    # Optional in the file: a plan without it (every plan before quantized storage) is plain.
    quant: tuple[str, ...] = ()
    # Optional in the file (absent: the model's own storage, nothing pruned): the format this
    # block alone is stored in (fp8, q8_0, q4_k; `runtime.engine.conversion` converts it when
    # the plan is applied), and the MLP hidden units removed from it, by the in-block path of
    # the Linear that reads them (`runtime.analysis.sites`), paths and units sorted.
    format: DType | None = None
    pruned: tuple[tuple[str, tuple[int, ...]], ...] = ()
    # where a streamed block lives on the host: optional in the file, absent means RAM (every
    # plan before the disk tier), written only for DISK so older plans keep their text and hash
    tier: Tier = Tier.RAM


@dataclasses.dataclass(frozen=True)
class Predictions:
    step_ms: float
    peak_vram_bytes: int
    lower_bound_ms: float
    # the run's predicted host RAM peak over its phases (planner.host_peak); optional in the
    # file, absent (None) in plans made before it, which keep their text and hash
    host_peak_bytes: int | None = None


@dataclasses.dataclass(frozen=True)
class Provenance:
    tool_version: str
    profile_id: int | None
    created: str  # ISO 8601


@dataclasses.dataclass(frozen=True)
class ExpertPlan:
    """The placement of a further expert of the model (Wan 2.2 A14B's `transformer_2`): the
    plan's own `blocks`, `prefetch_depth`, `host_memory` and `predictions` are the first
    expert's (the pipeline's `transformer`)."""

    attr: str  # the pipeline attribute of this expert
    blocks: tuple[BlockPlan, ...]
    prefetch_depth: int
    host_memory: HostMemory
    predictions: Predictions


@dataclasses.dataclass(frozen=True)
class Plan:
    model: ModelRef
    workload: Workload
    target: Target
    blocks: tuple[BlockPlan, ...]
    prefetch_depth: int
    host_memory: HostMemory
    predictions: Predictions
    provenance: Provenance
    format_version: int = FORMAT_VERSION
    # further experts' placements, in the order the pipeline runs them; () for one transformer,
    # and for a two-expert plan that places every expert alike (the file has no `experts` then)
    experts: tuple[ExpertPlan, ...] = ()

    def for_expert(self, attr: str) -> "Plan":
        """The one-transformer plan of the pipeline attribute `attr`: the first expert's
        (FIRST_EXPERT) or one not named in `experts` gets the plan's own placement."""
        for e in self.experts:
            if e.attr == attr:
                return dataclasses.replace(
                    self, blocks=e.blocks, prefetch_depth=e.prefetch_depth,
                    host_memory=e.host_memory, predictions=e.predictions, experts=(),
                )
        return dataclasses.replace(self, experts=())

    @property
    def streamed(self) -> tuple[BlockPlan, ...]:
        return tuple(b for b in self.blocks if b.placement is Placement.STREAMED)

    @property
    def resident(self) -> tuple[BlockPlan, ...]:
        return tuple(b for b in self.blocks if b.placement is Placement.RESIDENT)


# ---------------------------------------------------------------- writing


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    out = {
        "format_version": plan.format_version,
        "model": {
            "id": plan.model.id,
            "family": plan.model.family,
            "storage_dtype": plan.model.storage_dtype.value,
            "compute_dtype": plan.model.compute_dtype.value,
        },
        "workload": _workload_to_dict(plan.workload),
        "target": {
            "gpu_name": plan.target.gpu_name,
            "vram_budget_bytes": plan.target.vram_budget_bytes,
        },
        "blocks": _blocks_to_list(plan.blocks),
        "prefetch_depth": plan.prefetch_depth,
        "host_memory": plan.host_memory.value,
        "predictions": _predictions_to_dict(plan.predictions),
        "provenance": {
            "tool_version": plan.provenance.tool_version,
            "profile_id": plan.provenance.profile_id,
            "created": plan.provenance.created,
        },
    }
    if plan.experts:  # written only for a model with experts placed apart: other plans keep their text
        out["experts"] = [
            {"attr": e.attr, "blocks": _blocks_to_list(e.blocks), "prefetch_depth": e.prefetch_depth,
             "host_memory": e.host_memory.value, "predictions": _predictions_to_dict(e.predictions)}
            for e in plan.experts
        ]
    return out


def _blocks_to_list(blocks: tuple[BlockPlan, ...]) -> list[dict[str, Any]]:
    return [
        {
            "name": b.name,
            "kind": b.kind,
            "bytes": b.bytes,
            "placement": b.placement.value,
            "cast": b.cast.value,
            **({"quant": list(b.quant)} if b.quant else {}),
            **({"format": b.format.value} if b.format is not None else {}),
            **({"pruned": {path: list(units) for path, units in b.pruned}} if b.pruned else {}),
            **({"tier": b.tier.value} if b.tier is not Tier.RAM else {}),
        }
        for b in blocks
    ]


def _predictions_to_dict(p: Predictions) -> dict[str, Any]:
    return {"step_ms": p.step_ms, "peak_vram_bytes": p.peak_vram_bytes, "lower_bound_ms": p.lower_bound_ms,
            **({"host_peak_bytes": p.host_peak_bytes} if p.host_peak_bytes is not None else {})}


def _workload_to_dict(w: Workload) -> dict[str, Any]:
    out: dict[str, Any] = {
        "height": w.height,
        "width": w.width,
        "batch": w.batch,
        "cfg": w.cfg.value,
        "text_tokens": w.text_tokens,
    }
    frames = w.frames
    if frames != 1:  # written only for video: image plans keep their v1 text (and hash)
        out["frames"] = frames
    return out


def dumps_plan(plan: Plan) -> str:
    return json.dumps(plan_to_dict(plan), indent=2, allow_nan=False) + "\n"


def save_plan(plan: Plan, path: str | Path, option: str = "plan file") -> None:
    """Write atomically onto a regular file or a new path: a reader never sees half a plan,
    and a symlink, device, FIFO or directory is refused (`option` names it in the message)."""
    from runtime.files import write_atomic

    write_atomic(path, dumps_plan(plan), option)


# ---------------------------------------------------------------- reading


def load_plan(path: str | Path) -> Plan:
    """Read and check the plan file at `path`: a regular file of at most 10 MB (the bound holds
    while reading, so /dev/zero, a FIFO or a growing stream is refused, never read to the end)."""
    from runtime.files import read_bounded

    path = Path(path)
    raw = read_bounded(path, MAX_PLAN_FILE_BYTES, "plan file", PlanFormatError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PlanFormatError(f"plan file {path} is not UTF-8 text: it is not a plan file") from e
    return loads_plan(text, source=str(path))


def loads_plan(text: str, source: str = "plan") -> Plan:
    if len(text.encode("utf-8")) > MAX_PLAN_FILE_BYTES:
        raise PlanFormatError(f"{source} is over the 10 MB limit: it is not a plan file")
    try:
        data = loads_strict(text)
    except DuplicateKey as e:
        raise PlanFormatError(f"{source}: key {e.key!r} appears twice in one object; keep one") from None
    except NonFiniteConstant as e:
        raise PlanFormatError(
            f"{source}: {e.name} is not a number a plan may hold; write a finite number"
        ) from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, huge integers, deep nesting
        raise PlanFormatError(f"{source} is not valid JSON ({e}): export it again") from None
    return plan_from_dict(data, source)


def plan_from_dict(data: Any, source: str = "plan") -> Plan:
    r = _Reader(source)
    r.object(data, "plan")
    version = data.get("format_version")
    if type(version) is int and version > FORMAT_VERSION:
        raise PlanFormatError(
            f"{source} has format_version {version}, newer than this tool reads "
            f"({FORMAT_VERSION}): upgrade offload-planner (git pull in its repository, then pip install -e .)"
        )
    r.keys(data, "plan", _TOP_KEYS | (_OPTIONAL_TOP_KEYS & set(data)))
    if type(version) is not int or version != FORMAT_VERSION:
        raise PlanFormatError(f"{source}: format_version must be {FORMAT_VERSION}, got {version!r}")

    m = r.section(data, "model", {"id", "family", "storage_dtype", "compute_dtype"})
    model = ModelRef(
        id=r.string(m, "model.id"),
        family=r.string(m, "model.family"),
        storage_dtype=r.enum(m, "model.storage_dtype", DType),
        compute_dtype=r.enum(m, "model.compute_dtype", DType),
    )
    workload = _read_workload(r, data)
    t = r.section(data, "target", {"gpu_name", "vram_budget_bytes"})
    target = Target(
        gpu_name=r.string(t, "target.gpu_name"),
        vram_budget_bytes=r.integer(t, "target.vram_budget_bytes", 1, MAX_BUDGET_BYTES),
    )
    blocks = _read_blocks(r, data["blocks"], "blocks")
    depth = r.integer(data, "prefetch_depth", 1, MAX_PREFETCH_DEPTH)
    host_memory = r.enum(data, "host_memory", HostMemory)
    predictions = _read_predictions(r, data, "predictions")
    v = r.section(data, "provenance", {"tool_version", "profile_id", "created"})
    profile_id = v["profile_id"]
    if profile_id is not None:
        profile_id = r.integer(v, "provenance.profile_id", 1, 2**63 - 1)
    provenance = Provenance(
        tool_version=r.string(v, "provenance.tool_version"),
        profile_id=profile_id,
        created=r.timestamp(v, "provenance.created"),
    )
    experts = _read_experts(r, data["experts"]) if "experts" in data else ()
    return Plan(model, workload, target, blocks, depth, host_memory, predictions, provenance,
                experts=experts)


def _read_predictions(r: "_Reader", data: dict, where: str) -> Predictions:
    keys = {"step_ms", "peak_vram_bytes", "lower_bound_ms"}
    value = data["predictions"]
    optional = {"host_peak_bytes"} & set(value) if type(value) is dict else set()
    p = r.section(data, "predictions", keys | optional, where)
    return Predictions(
        step_ms=r.number(p, f"{where}.step_ms"),
        peak_vram_bytes=r.integer(p, f"{where}.peak_vram_bytes", 0, MAX_BUDGET_BYTES),
        lower_bound_ms=r.number(p, f"{where}.lower_bound_ms"),
        host_peak_bytes=r.integer(p, f"{where}.host_peak_bytes", 0, MAX_BUDGET_BYTES) if optional else None,
    )


def _read_experts(r: "_Reader", items: Any) -> tuple[ExpertPlan, ...]:
    if type(items) is not list or not 1 <= len(items) <= MAX_EXPERTS:
        raise r.fail("experts", f"a list of 1 to {MAX_EXPERTS} further experts", items)
    out, seen = [], {FIRST_EXPERT}
    for i, item in enumerate(items):
        where = f"experts[{i}]"
        r.object(item, where)
        r.keys(item, where, _EXPERT_KEYS)
        attr = r.string(item, f"{where}.attr")
        if not (attr.isascii() and attr.isidentifier()) or attr in seen:
            raise r.fail(f"{where}.attr", f"a pipeline attribute other than {sorted(seen)}", attr)
        seen.add(attr)
        out.append(ExpertPlan(
            attr=attr,
            blocks=_read_blocks(r, item["blocks"], f"{where}.blocks"),
            prefetch_depth=r.integer(item, f"{where}.prefetch_depth", 1, MAX_PREFETCH_DEPTH),
            host_memory=r.enum(item, f"{where}.host_memory", HostMemory),
            predictions=_read_predictions(r, item, f"{where}.predictions"),
        ))
    return tuple(out)


_WORKLOAD_KEYS = {"height", "width", "batch", "cfg", "text_tokens"}
def _read_workload(r: "_Reader", data: dict) -> Workload:
    w = data["workload"]
    r.object(w, "workload")
    r.keys({k: v for k, v in w.items() if k != "frames"}, "workload", _WORKLOAD_KEYS)
    height = r.integer(w, "workload.height", 16, MAX_SIDE)
    width = r.integer(w, "workload.width", 16, MAX_SIDE)
    if height % 16 or width % 16:
        raise PlanFormatError(f"{r.source}: workload height and width must be multiples of 16")
    fields = dict(
        height=height,
        width=width,
        batch=r.integer(w, "workload.batch", 1, 64),
        cfg=r.enum(w, "workload.cfg", CfgMode),
        text_tokens=r.integer(w, "workload.text_tokens", 1, 4096),
    )
    fields["frames"] = r.integer(w, "workload.frames", 1, MAX_FRAMES) if "frames" in w else 1
    return Workload(**fields)


_TOP_KEYS = {
    "format_version", "model", "workload", "target", "blocks", "prefetch_depth",
    "host_memory", "predictions", "provenance",
}
_OPTIONAL_TOP_KEYS = {"experts"}
_EXPERT_KEYS = {"attr", "blocks", "prefetch_depth", "host_memory", "predictions"}
_BLOCK_KEYS = {"name", "kind", "bytes", "placement", "cast"}
_OPTIONAL_BLOCK_KEYS = {"quant", "tier", "format", "pruned"}
MAX_PRUNED_SITES = 64  # MLPs of one block that may be pruned (a UNet block has dozens)
MAX_UNITS = 1 << 20


def _read_blocks(r: "_Reader", items: Any, field: str) -> tuple[BlockPlan, ...]:
    if type(items) is not list or not items:
        raise PlanFormatError(f"{r.source}: {field} must be a non-empty list")
    if len(items) > MAX_BLOCKS:
        raise PlanFormatError(f"{r.source}: {len(items)} blocks is over the limit of {MAX_BLOCKS}")
    blocks = []
    seen = set()
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        r.object(item, where)
        r.keys(item, where, _BLOCK_KEYS | (_OPTIONAL_BLOCK_KEYS & set(item)))
        name = r.string(item, f"{where}.name")
        if name in seen:
            raise PlanFormatError(f"{r.source}: block {name!r} appears twice in {field}")
        seen.add(name)
        placement = r.enum(item, f"{where}.placement", Placement)
        tier = r.enum(item, f"{where}.tier", Tier) if "tier" in item else Tier.RAM
        if tier is Tier.DISK and placement is not Placement.STREAMED:
            raise r.fail(f"{where}.tier", "\"ram\" (or absent) for a resident block", tier.value)
        blocks.append(
            BlockPlan(
                name=name,
                kind=r.string(item, f"{where}.kind"),
                bytes=r.integer(item, f"{where}.bytes", 0, MAX_BUDGET_BYTES),
                placement=placement,
                cast=r.enum(item, f"{where}.cast", CastMode),
                quant=_read_quant(r, item, where),
                format=_read_format(r, item, where),
                pruned=_read_pruned(r, item, where),
                tier=tier,
            )
        )
    return tuple(blocks)


def _read_format(r: "_Reader", item: dict, where: str) -> DType | None:
    if "format" not in item:
        return None
    value = item["format"]
    if type(value) is not str or value not in {f.value for f in FORMATS}:
        raise r.fail(f"{where}.format", f"one of {', '.join(f.value for f in FORMATS)}", value)
    return DType(value)


def _read_pruned(r: "_Reader", item: dict, where: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if "pruned" not in item:
        return ()
    value = item["pruned"]
    must = (f"an object of 1 to {MAX_PRUNED_SITES} module paths, in sorted order, each to a "
            f"sorted list of distinct unit indices below {MAX_UNITS}")
    if type(value) is not dict or not value or len(value) > MAX_PRUNED_SITES \
            or list(value) != sorted(value):
        raise r.fail(f"{where}.pruned", must, value)
    out = []
    for path, units in value.items():
        if not path or len(path) > 256 or type(units) is not list or not units \
                or len(units) > MAX_UNITS or any(type(u) is not int or not 0 <= u < MAX_UNITS
                                                 for u in units) or units != sorted(set(units)):
            raise r.fail(f"{where}.pruned", must, value)
        out.append((path, tuple(units)))
    return tuple(out)


def _read_quant(r: "_Reader", item: dict, where: str) -> tuple[str, ...]:
    if "quant" not in item:
        return ()
    value = item["quant"]
    known = [d.value for d in DType if d.is_quantized]
    if (
        type(value) is not list or not value or len(value) > len(known)
        or any(type(v) is not str or v not in known for v in value)
        or value != sorted(set(value))
    ):
        raise r.fail(f"{where}.quant", f"a sorted list of distinct quant types ({', '.join(known)})", value)
    return tuple(value)


class _Reader:
    """Field-by-field checks; each failure names the field and what it must be."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field: str, must: str, got: Any) -> PlanFormatError:
        shown = repr(got)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return PlanFormatError(f"{self.source}: {field} must be {must}, got {shown}")

    def object(self, value: Any, field: str) -> None:
        if type(value) is not dict:
            raise self.fail(field, "a JSON object", type(value).__name__)

    def keys(self, obj: dict, field: str, expected: set[str]) -> None:
        unknown = sorted(set(obj) - expected)
        if unknown:
            raise PlanFormatError(
                f"{self.source}: unknown key {unknown[0]!r} in {field}; remove it "
                f"(this tool reads plan format {FORMAT_VERSION})"
            )
        missing = sorted(expected - set(obj))
        if missing:
            raise PlanFormatError(f"{self.source}: {field} is missing the key {missing[0]!r}")

    def section(self, data: dict, name: str, keys: set[str], field: str | None = None) -> dict:
        value = data[name]
        self.object(value, field or name)
        self.keys(value, field or name, keys)
        return value

    def string(self, obj: dict, field: str) -> str:
        value = obj[field.rsplit(".", 1)[-1]]
        if type(value) is not str or not value or len(value) > 256:
            raise self.fail(field, "a non-empty string of at most 256 characters", value)
        return value

    def integer(self, obj: dict, field: str, low: int, high: int) -> int:
        value = obj[field.rsplit(".", 1)[-1]]
        if type(value) is not int or not low <= value <= high:
            raise self.fail(field, f"an integer from {low} to {high}", value)
        return value

    def number(self, obj: dict, field: str) -> float:
        value = obj[field.rsplit(".", 1)[-1]]
        if type(value) not in (int, float) or not math.isfinite(value) or value < 0:
            raise self.fail(field, "a finite number, zero or more", value)
        return float(value)

    def enum(self, obj: dict, field: str, kind: type[enum.Enum]):
        value = obj[field.rsplit(".", 1)[-1]]
        try:
            return kind(value)
        except (ValueError, TypeError):
            choices = ", ".join(repr(k.value) for k in kind)
            raise self.fail(field, f"one of {choices}", value) from None

    def timestamp(self, obj: dict, field: str) -> str:
        from datetime import datetime

        value = self.string(obj, field)
        try:
            if "T" not in value:
                raise ValueError(value)
            datetime.fromisoformat(value)
        except ValueError:
            raise self.fail(field, "an ISO 8601 time", value) from None
        return value


# ---------------------------------------------------------------- building


def build_plan(
    inventory,
    streamed: "set[str] | frozenset[str]",
    *,
    workload: Workload,
    target: Target,
    prefetch_depth: int = 2,
    host_memory: HostMemory = HostMemory.PINNED,
    cast: CastMode = CastMode.PRE,
    casts: "Mapping[str, CastMode] | None" = None,
    predictions: Predictions | None = None,
    profile_id: int | None = None,
    created: str | None = None,
    formats: "Mapping[str, DType] | None" = None,
    pruned: "Mapping[str, tuple[tuple[str, tuple[int, ...]], ...]] | None" = None,
    on_disk: "set[str] | frozenset[str]" = frozenset(),
) -> Plan:
    """A plan for `inventory` (a `runtime.inventory.Inventory`) streaming the named blocks.

    `cast` applies to every block not named in `casts` (a cast per block name); casts only
    matter for fp8 and quantized storage (use PRE otherwise). Each block records the quant
    types it is stored in (`runtime.inventory.quantization_of`). `formats` and `pruned` give
    blocks their own storage format and pruned MLP units; `inventory` then holds those blocks'
    bytes as converted (`runtime.analysis.mixed.converted_inventory`). Streamed blocks named
    in `on_disk` live on the disk tier, the other streamed blocks in RAM.
    """
    from datetime import datetime, timezone

    from runtime.dtypes import compute_dtype
    from runtime.inventory import quantization_of
    from runtime.version import TOOL_VERSION

    names = {b.name for b in inventory.blocks}
    unknown = sorted(set(streamed) - names)
    if unknown:
        raise PlanFormatError(f"block {unknown[0]!r} is not in {inventory.model_id}")
    if set(on_disk) - set(streamed):
        raise PlanFormatError(f"block {sorted(set(on_disk) - set(streamed))[0]!r} is on disk but not streamed")
    blocks = tuple(
        BlockPlan(
            name=b.name,
            kind=b.kind,
            bytes=b.bytes,
            placement=Placement.STREAMED if b.name in streamed else Placement.RESIDENT,
            cast=(casts or {}).get(b.name, cast),
            quant=quantization_of(b),
            format=(formats or {}).get(b.name),
            pruned=(pruned or {}).get(b.name, ()),
            tier=Tier.DISK if b.name in on_disk else Tier.RAM,
        )
        for b in inventory.blocks
    )
    return Plan(
        model=ModelRef(
            id=inventory.model_id,
            family=inventory.family,
            storage_dtype=inventory.storage_dtype,
            compute_dtype=compute_dtype(inventory.storage_dtype),
        ),
        workload=workload,
        target=target,
        blocks=blocks,
        prefetch_depth=prefetch_depth,
        host_memory=host_memory,
        predictions=predictions or Predictions(step_ms=0.0, peak_vram_bytes=0, lower_bound_ms=0.0),
        provenance=Provenance(
            tool_version=TOOL_VERSION,
            profile_id=profile_id,
            created=created or datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        ),
    )


def with_experts(plan: Plan, others: "Mapping[str, Plan]") -> Plan:
    """`plan` (the first expert's) carrying the placements of further experts: `others` maps a
    pipeline attribute to a one-transformer plan of the same model, workload and target."""
    for attr, other in others.items():
        if (other.model, other.workload, other.target) != (plan.model, plan.workload, plan.target):
            raise PlanFormatError(f"the plan for expert {attr!r} is for another model, workload or target")
    experts = tuple(
        ExpertPlan(attr, o.blocks, o.prefetch_depth, o.host_memory, o.predictions)
        for attr, o in others.items() if attr != FIRST_EXPERT
    )
    return dataclasses.replace(plan, experts=experts)


def stream_all_plan(inventory, workload: Workload, target: Target,
                    cast: CastMode = CastMode.PRE) -> "Plan":
    """Every block streamed at depth 1 from pinned memory: the plan that always fits, under
    which a first forward is measured (`apply_auto`) or a text encoder is streamed."""
    return build_plan(inventory, {b.name for b in inventory.blocks}, workload=workload,
                      target=target, prefetch_depth=1, host_memory=HostMemory.PINNED, cast=cast)
