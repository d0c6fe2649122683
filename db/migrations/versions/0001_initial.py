"""The store's first schema: machines, profiles with their blocks, plans, measured runs.

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    _create_machines()
    _create_profiles()
    _create_profile_blocks()
    _create_plans()
    _create_runs()


def _create_machines() -> None:
    op.create_table(
        "machines",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("hostname", sa.String(256), nullable=False),
        sa.Column("gpu_name", sa.String(256), nullable=False),
        sa.Column("gpu_memory_bytes", sa.BigInteger, nullable=False),
        sa.Column("pcie_gen", sa.Integer),
        sa.Column("pcie_width", sa.Integer),
        sa.Column("pcie_gen_max", sa.Integer),
        sa.Column("pcie_width_max", sa.Integer),
        sa.Column("driver", sa.String(64)),
        sa.Column("cuda", sa.String(64)),
        sa.Column("torch", sa.String(64), nullable=False),
        sa.Column("host_ram_bytes", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_machines"),
        sa.UniqueConstraint("fingerprint", name="uq_machines_fingerprint"),
    )


def _create_profiles() -> None:
    op.create_table(
        "profiles",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("machine_id", sa.Integer, nullable=False),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("batch", sa.Integer, nullable=False),
        sa.Column("cfg", sa.String(16), nullable=False),
        sa.Column("text_tokens", sa.Integer, nullable=False),
        sa.Column("storage_dtype", sa.String(16), nullable=False),
        sa.Column("compute_dtype", sa.String(16), nullable=False),
        sa.Column("pinned_gbps", sa.Float, nullable=False),
        sa.Column("pageable_gbps", sa.Float, nullable=False),
        sa.Column("pinned_under_compute_gbps", sa.Float, nullable=False),
        sa.Column("copy_overhead_us", sa.Float, nullable=False),
        sa.Column("bandwidth_by_size", sa.JSON, nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("non_block_ms", sa.Float, nullable=False),
        sa.Column("non_block_bytes", sa.BigInteger, nullable=False),
        sa.Column("workspace_bytes", sa.BigInteger, nullable=False),
        sa.Column("is_estimate", sa.Boolean, nullable=False),
        sa.Column("source", sa.String(512), nullable=False),
        sa.Column("tool_version", sa.String(64), nullable=False),
        sa.Column("created", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_profiles"),
        sa.ForeignKeyConstraint(["machine_id"], ["machines.id"], name="fk_profiles_machine_id_machines"),
    )
    op.create_index("ix_profiles_lookup", "profiles", ["machine_id", "model_id", "height", "width"])


def _create_profile_blocks() -> None:
    op.create_table(
        "profile_blocks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("profile_id", sa.Integer, nullable=False),
        sa.Column("block_index", sa.Integer, nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("compute_ms", sa.Float, nullable=False),
        sa.Column("cast_ms", sa.Float, nullable=False),
        sa.Column("activation_bytes", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_profile_blocks"),
        sa.ForeignKeyConstraint(
            ["profile_id"], ["profiles.id"], name="fk_profile_blocks_profile_id_profiles"
        ),
        sa.UniqueConstraint("profile_id", "block_index", name="uq_profile_blocks_index"),
    )


def _create_plans() -> None:
    op.create_table(
        "plans",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("gpu_name", sa.String(256), nullable=False),
        sa.Column("budget_bytes", sa.BigInteger, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("batch", sa.Integer, nullable=False),
        sa.Column("cfg", sa.String(16), nullable=False),
        sa.Column("text_tokens", sa.Integer, nullable=False),
        sa.Column("plan_json", sa.Text, nullable=False),
        sa.Column("predicted_step_ms", sa.Float, nullable=False),
        sa.Column("predicted_peak_bytes", sa.BigInteger, nullable=False),
        sa.Column("profile_id", sa.Integer),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_plans"),
        sa.ForeignKeyConstraint(["profile_id"], ["profiles.id"], name="fk_plans_profile_id_profiles"),
    )
    op.create_index("ix_plans_model_budget", "plans", ["model_id", "budget_bytes"])


def _create_runs() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("plan_id", sa.Integer, nullable=False),
        sa.Column("step_ms", sa.Float, nullable=False),
        sa.Column("peak_vram_bytes", sa.BigInteger, nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name="fk_runs_plan_id_plans"),
    )
    op.create_index("ix_runs_plan_id", "runs", ["plan_id"])


def downgrade() -> None:
    op.drop_index("ix_runs_plan_id", table_name="runs")
    op.drop_table("runs")
    op.drop_index("ix_plans_model_budget", table_name="plans")
    op.drop_table("plans")
    op.drop_table("profile_blocks")
    op.drop_index("ix_profiles_lookup", table_name="profiles")
    op.drop_table("profiles")
    op.drop_table("machines")
