"""The store's tables at the head revision (typed ORM, SQLAlchemy 2.0 style).

Only `db/store.py` touches these rows; callers get frozen dataclasses. Migrations never import
this module: each revision carries its own frozen table definitions.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# Constraint names spelled out so that migrations (which name them by hand) and the ORM agree.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {int: BigInteger, str: String(256), dict[str, Any]: JSON, list[Any]: JSON}


class Machine(Base):
    __tablename__ = "machines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(128), unique=True)
    hostname: Mapped[str]
    gpu_name: Mapped[str]
    gpu_memory_bytes: Mapped[int]
    pcie_gen: Mapped[Optional[int]] = mapped_column(Integer)
    pcie_width: Mapped[Optional[int]] = mapped_column(Integer)
    pcie_gen_max: Mapped[Optional[int]] = mapped_column(Integer)
    pcie_width_max: Mapped[Optional[int]] = mapped_column(Integer)
    driver: Mapped[Optional[str]] = mapped_column(String(64))
    cuda: Mapped[Optional[str]] = mapped_column(String(64))
    torch: Mapped[str] = mapped_column(String(64))
    host_ram_bytes: Mapped[int]

    profiles: Mapped[list["ProfileRow"]] = relationship(back_populates="machine")


class ProfileRow(Base):
    __tablename__ = "profiles"
    __table_args__ = (Index("ix_profiles_lookup", "machine_id", "model_id", "height", "width"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"))
    model_id: Mapped[str] = mapped_column(String(128))
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    cfg: Mapped[str] = mapped_column(String(16))
    text_tokens: Mapped[int] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    storage_dtype: Mapped[str] = mapped_column(String(16))
    compute_dtype: Mapped[str] = mapped_column(String(16))
    pinned_gbps: Mapped[float] = mapped_column(Float)
    pageable_gbps: Mapped[float] = mapped_column(Float)
    pinned_under_compute_gbps: Mapped[float] = mapped_column(Float)
    copy_overhead_us: Mapped[float] = mapped_column(Float)
    bandwidth_by_size: Mapped[list[Any]]  # [[size_bytes, pinned_gbps, pageable_gbps], ...]
    device: Mapped[str] = mapped_column(String(64))
    non_block_ms: Mapped[float] = mapped_column(Float)
    non_block_bytes: Mapped[int]
    workspace_bytes: Mapped[int]
    is_estimate: Mapped[bool]
    source: Mapped[str] = mapped_column(String(512))
    tool_version: Mapped[str] = mapped_column(String(64))
    created: Mapped[str] = mapped_column(String(64))  # ISO 8601, as the profiler wrote it
    disk_read_gbps: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    disk_read_under_copy_gbps: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    host_baseline_bytes: Mapped[Optional[int]] = mapped_column(BigInteger, nullable=True)

    machine: Mapped[Machine] = relationship(back_populates="profiles")
    blocks: Mapped[list["ProfileBlockRow"]] = relationship(
        back_populates="profile", cascade="all, delete-orphan", order_by="ProfileBlockRow.block_index"
    )


class ProfileBlockRow(Base):
    __tablename__ = "profile_blocks"
    __table_args__ = (UniqueConstraint("profile_id", "block_index", name="uq_profile_blocks_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    profile_id: Mapped[int] = mapped_column(ForeignKey("profiles.id"))
    block_index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str]
    kind: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int]
    compute_ms: Mapped[float] = mapped_column(Float)
    cast_ms: Mapped[float] = mapped_column(Float)
    activation_bytes: Mapped[int]

    profile: Mapped[ProfileRow] = relationship(back_populates="blocks")


class PlanRow(Base):
    __tablename__ = "plans"
    __table_args__ = (Index("ix_plans_model_budget", "model_id", "budget_bytes"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(String(128))
    gpu_name: Mapped[str]
    budget_bytes: Mapped[int]
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    cfg: Mapped[str] = mapped_column(String(16))
    text_tokens: Mapped[int] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    storage_dtype: Mapped[str] = mapped_column(String(16))
    plan_json: Mapped[str] = mapped_column(Text)  # runtime.plan.dumps_plan text, unbounded
    content_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)  # sha256 of plan_json
    # sha256 of the plan without its creation time: the same request tuned twice is one plan
    body_hash: Mapped[str] = mapped_column(String(64), index=True)
    # False: stored with allow_unknown_model for a model the catalog lacked; never ranked by best
    catalog_model: Mapped[bool] = mapped_column(Boolean)
    predicted_step_ms: Mapped[float] = mapped_column(Float)
    predicted_peak_bytes: Mapped[int]
    # the run's predicted host RAM peak (plan predictions.host_peak_bytes); None: not predicted
    host_peak_bytes: Mapped[Optional[int]] = mapped_column(BigInteger, nullable=True)
    disk_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # disk tier
    profile_id: Mapped[Optional[int]] = mapped_column(ForeignKey("profiles.id"))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    runs: Mapped[list["RunRow"]] = relationship(back_populates="plan", cascade="all, delete-orphan")


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id"), index=True)
    step_ms: Mapped[float] = mapped_column(Float)
    peak_vram_bytes: Mapped[int]
    device: Mapped[str] = mapped_column(String(64))
    # What ran: the workload, steps and GPU (None for runs stored before revision 0003).
    height: Mapped[Optional[int]] = mapped_column(Integer)
    width: Mapped[Optional[int]] = mapped_column(Integer)
    batch: Mapped[Optional[int]] = mapped_column(Integer)
    cfg: Mapped[Optional[str]] = mapped_column(String(16))
    text_tokens: Mapped[Optional[int]] = mapped_column(Integer)
    frames: Mapped[Optional[int]] = mapped_column(Integer)
    steps: Mapped[Optional[int]] = mapped_column(Integer)
    gpu_name: Mapped[Optional[str]] = mapped_column(String(256))
    # True only for a run of the plan's own workload on its target GPU: only those rank it
    comparable: Mapped[bool] = mapped_column(Boolean)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    plan: Mapped[PlanRow] = relationship(back_populates="runs")


class BlockAnalysisRow(Base):
    """One `planner analyze` run: each block's error in each format, over `inputs` forwards."""

    __tablename__ = "block_analyses"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(String(128), index=True)
    profile_id: Mapped[Optional[int]] = mapped_column(ForeignKey("profiles.id"))
    inputs: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    errors: Mapped[list["BlockErrorRow"]] = relationship(
        back_populates="analysis", cascade="all, delete-orphan", order_by="BlockErrorRow.id"
    )


class BlockErrorRow(Base):
    __tablename__ = "block_errors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("block_analyses.id"), index=True)
    block: Mapped[str]
    kind: Mapped[str] = mapped_column(String(64))
    option: Mapped[str] = mapped_column(String(32))  # "fp8", "q8_0", "q4_k", "prune:0.25"
    rel_error: Mapped[float] = mapped_column(Float)
    pruned: Mapped[Optional[dict[str, Any]]]  # a pruning option's units by MLP path (JSON)

    analysis: Mapped[BlockAnalysisRow] = relationship(back_populates="errors")


class BlockAnalysisPlanRow(Base):
    """A plan `tune --max-error` made from a block analysis: the table it was made from."""

    __tablename__ = "block_analysis_plans"

    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id"), primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("block_analyses.id"), index=True)
