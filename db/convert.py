"""Rows to frozen dataclasses and back. Nothing outside db/ ever sees an ORM row."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import datetime, timezone

from db.models import Machine, PlanRow, ProfileBlockRow, ProfileRow
from profiler.types import Bandwidth, BandwidthPoint, BlockProfile, MachineFacts, Profile
from runtime.dtypes import DType
from runtime.plan import Plan, Tier, dumps_plan, loads_plan, plan_to_dict
from runtime.workload import CfgMode, Workload

_MACHINE_FIELDS = [f.name for f in dataclasses.fields(MachineFacts)]


@dataclasses.dataclass(frozen=True)
class StoredPlan:
    """A plan as stored: its id, when it was stored, and what its measured runs say.

    `best_measured_ms` and `measured_runs` count only comparable runs (the plan's own workload
    on its target GPU); `runs` counts every run recorded against the plan."""

    id: int
    plan: Plan
    created: datetime
    best_measured_ms: float | None
    runs: int
    measured_runs: int = 0
    catalog_model: bool = True

    @property
    def ranking_ms(self) -> float:
        """Measured time where there is one, else the prediction."""
        return self.best_measured_ms if self.best_measured_ms is not None else self.plan.predictions.step_ms

    @property
    def ranked_by(self) -> str:
        """Which figure `ranking_ms` is: "measured" or "predicted"."""
        return "measured" if self.best_measured_ms is not None else "predicted"


def plan_text_and_hash(plan: Plan) -> tuple[str, str]:
    text = dumps_plan(plan)
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()


def plan_body_hash(plan: Plan) -> str:
    """sha256 of the plan without its creation time (migration 0003 computes it the same way):
    the same request tuned twice gives the same body."""
    data = plan_to_dict(plan)
    data["provenance"].pop("created", None)
    body = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def workload_of(height: int, width: int, batch: int, cfg: str, text_tokens: int, frames: int) -> Workload:
    return Workload(height=height, width=width, batch=batch, cfg=CfgMode(cfg), text_tokens=text_tokens,
                    frames=frames)




def machine_values(facts: MachineFacts) -> dict:
    return {name: getattr(facts, name) for name in _MACHINE_FIELDS}


def profile_row(profile: Profile, machine: Machine) -> ProfileRow:
    w, bw = profile.workload, profile.bandwidth
    return ProfileRow(
        machine=machine,
        model_id=profile.model_id,
        height=w.height, width=w.width, batch=w.batch, cfg=w.cfg.value, text_tokens=w.text_tokens,
        frames=w.frames,
        storage_dtype=profile.storage_dtype.value,
        compute_dtype=profile.compute_dtype.value,
        pinned_gbps=bw.pinned_gbps,
        pageable_gbps=bw.pageable_gbps,
        pinned_under_compute_gbps=bw.pinned_under_compute_gbps,
        copy_overhead_us=bw.copy_overhead_us,
        bandwidth_by_size=[[p.size_bytes, p.pinned_gbps, p.pageable_gbps] for p in bw.by_size],
        disk_read_gbps=bw.disk_read_gbps,
        disk_read_under_copy_gbps=bw.disk_read_under_copy_gbps,
        host_baseline_bytes=profile.host_baseline_bytes,
        device=profile.device,
        non_block_ms=profile.non_block_ms,
        non_block_bytes=profile.non_block_bytes,
        workspace_bytes=profile.workspace_bytes,
        is_estimate=profile.is_estimate,
        source=profile.source,
        tool_version=profile.tool_version,
        created=profile.created,
        blocks=[
            ProfileBlockRow(
                block_index=b.index, name=b.name, kind=b.kind, bytes=b.bytes,
                compute_ms=b.compute_ms, cast_ms=b.cast_ms, activation_bytes=b.activation_bytes,
            )
            for b in profile.blocks
        ],
    )


def to_profile(row: ProfileRow) -> Profile:
    m = row.machine
    return Profile(
        machine=MachineFacts(**{name: getattr(m, name) for name in _MACHINE_FIELDS}),
        device=row.device,
        model_id=row.model_id,
        workload=workload_of(row.height, row.width, row.batch, row.cfg, row.text_tokens, row.frames or 1),
        storage_dtype=DType(row.storage_dtype),
        compute_dtype=DType(row.compute_dtype),
        bandwidth=Bandwidth(
            pinned_gbps=row.pinned_gbps,
            pageable_gbps=row.pageable_gbps,
            pinned_under_compute_gbps=row.pinned_under_compute_gbps,
            copy_overhead_us=row.copy_overhead_us,
            by_size=tuple(BandwidthPoint(int(s), float(p), float(q)) for s, p, q in row.bandwidth_by_size),
            disk_read_gbps=row.disk_read_gbps,
            disk_read_under_copy_gbps=row.disk_read_under_copy_gbps,
        ),
        blocks=tuple(
            BlockProfile(
                name=b.name, kind=b.kind, index=b.block_index, bytes=b.bytes,
                compute_ms=b.compute_ms, cast_ms=b.cast_ms, activation_bytes=b.activation_bytes,
            )
            for b in row.blocks
        ),
        non_block_ms=row.non_block_ms,
        non_block_bytes=row.non_block_bytes,
        workspace_bytes=row.workspace_bytes,
        is_estimate=bool(row.is_estimate),
        source=row.source,
        tool_version=row.tool_version,
        created=row.created,
        id=row.id,
        host_baseline_bytes=row.host_baseline_bytes,
    )


def plan_row(
    plan: Plan, text: str, digest: str, profile_id: int | None, catalog_model: bool = True
) -> PlanRow:
    w = plan.workload
    return PlanRow(
        model_id=plan.model.id,
        gpu_name=plan.target.gpu_name,
        budget_bytes=plan.target.vram_budget_bytes,
        height=w.height, width=w.width, batch=w.batch, cfg=w.cfg.value, text_tokens=w.text_tokens,
        frames=w.frames,
        storage_dtype=plan.model.storage_dtype.value,
        plan_json=text,
        content_hash=digest,
        body_hash=plan_body_hash(plan),
        catalog_model=catalog_model,
        predicted_step_ms=plan.predictions.step_ms,
        predicted_peak_bytes=plan.predictions.peak_vram_bytes,
        host_peak_bytes=plan.predictions.host_peak_bytes,
        disk_bytes=sum(b.bytes for b in plan.blocks if b.tier is Tier.DISK),
        profile_id=profile_id,
    )


def to_stored_plan(row: PlanRow, best_ms: float | None, runs: int, measured: int = 0) -> StoredPlan:
    created = row.created
    if created.tzinfo is None:  # SQLite keeps no zone; we always write UTC
        created = created.replace(tzinfo=timezone.utc)
    created = created.astimezone(timezone.utc)  # PostgreSQL answers in the session's zone
    return StoredPlan(
        id=row.id,
        plan=loads_plan(row.plan_json, source=f"stored plan {row.id}"),
        created=created,
        best_measured_ms=best_ms,
        runs=runs,
        measured_runs=measured,
        catalog_model=bool(row.catalog_model),
    )
