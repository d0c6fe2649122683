"""Rows to frozen dataclasses and back. Nothing outside db/ ever sees an ORM row."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import datetime, timezone

from db.models import Machine, PlanRow, ProfileBlockRow, ProfileRow
from profiler.types import Bandwidth, BandwidthPoint, BlockProfile, MachineFacts, Profile
from runtime.dtypes import DType
from runtime.plan import Plan, dumps_plan, loads_plan
from runtime.workload import CfgMode, Workload

_MACHINE_FIELDS = [f.name for f in dataclasses.fields(MachineFacts)]


@dataclasses.dataclass(frozen=True)
class StoredPlan:
    """A plan as stored: its id, when it was stored, and what its measured runs say."""

    id: int
    plan: Plan
    created: datetime
    best_measured_ms: float | None
    runs: int

    @property
    def ranking_ms(self) -> float:
        """Measured time where there is one, else the prediction."""
        return self.best_measured_ms if self.best_measured_ms is not None else self.plan.predictions.step_ms


def plan_text_and_hash(plan: Plan) -> tuple[str, str]:
    text = dumps_plan(plan)
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()


def machine_values(facts: MachineFacts) -> dict:
    return {name: getattr(facts, name) for name in _MACHINE_FIELDS}


def profile_row(profile: Profile, machine: Machine) -> ProfileRow:
    w, bw = profile.workload, profile.bandwidth
    return ProfileRow(
        machine=machine,
        model_id=profile.model_id,
        height=w.height, width=w.width, batch=w.batch, cfg=w.cfg.value, text_tokens=w.text_tokens,
        storage_dtype=profile.storage_dtype.value,
        compute_dtype=profile.compute_dtype.value,
        pinned_gbps=bw.pinned_gbps,
        pageable_gbps=bw.pageable_gbps,
        pinned_under_compute_gbps=bw.pinned_under_compute_gbps,
        copy_overhead_us=bw.copy_overhead_us,
        bandwidth_by_size=[[p.size_bytes, p.pinned_gbps, p.pageable_gbps] for p in bw.by_size],
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
        workload=Workload(
            height=row.height, width=row.width, batch=row.batch,
            cfg=CfgMode(row.cfg), text_tokens=row.text_tokens,
        ),
        storage_dtype=DType(row.storage_dtype),
        compute_dtype=DType(row.compute_dtype),
        bandwidth=Bandwidth(
            pinned_gbps=row.pinned_gbps,
            pageable_gbps=row.pageable_gbps,
            pinned_under_compute_gbps=row.pinned_under_compute_gbps,
            copy_overhead_us=row.copy_overhead_us,
            by_size=tuple(BandwidthPoint(int(s), float(p), float(q)) for s, p, q in row.bandwidth_by_size),
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
    )


def plan_row(plan: Plan, text: str, digest: str, profile_id: int | None) -> PlanRow:
    w = plan.workload
    return PlanRow(
        model_id=plan.model.id,
        gpu_name=plan.target.gpu_name,
        budget_bytes=plan.target.vram_budget_bytes,
        height=w.height, width=w.width, batch=w.batch, cfg=w.cfg.value, text_tokens=w.text_tokens,
        plan_json=text,
        content_hash=digest,
        predicted_step_ms=plan.predictions.step_ms,
        predicted_peak_bytes=plan.predictions.peak_vram_bytes,
        profile_id=profile_id,
    )


def to_stored_plan(row: PlanRow, best_ms: float | None, runs: int) -> StoredPlan:
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
    )
