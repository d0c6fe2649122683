"""Per-block sensitivity tables (`planner analyze`): each block's relative output error when
stored fp8, Q8_0 or Q4_K, or with its least active MLP units pruned (the units kept with the
row), kept beside the profile of the machine it was measured on.

- block_analyses: one analysis (model, optional profile, calibration forwards, when).
- block_errors: its rows (block, kind, option, relative error, pruned units).
- block_analysis_plans: which analysis a mixed plan (`tune --max-error`) was made from.

New tables only; nothing existing changes.

Revision ID: 0007_block_analysis
Revises: 0005_host_ram_tier
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_block_analysis"
down_revision = "0005_host_ram_tier"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "block_analyses",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("profile_id", sa.Integer, nullable=True),
        sa.Column("inputs", sa.Integer, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["profile_id"], ["profiles.id"],
                                name="fk_block_analyses_profile_id_profiles"),
        sa.PrimaryKeyConstraint("id", name="pk_block_analyses"),
    )
    op.create_index("ix_block_analyses_model_id", "block_analyses", ["model_id"])
    op.create_table(
        "block_errors",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("analysis_id", sa.Integer, nullable=False),
        sa.Column("block", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("option", sa.String(32), nullable=False),
        sa.Column("rel_error", sa.Float, nullable=False),
        sa.Column("pruned", sa.JSON, nullable=True),
        sa.ForeignKeyConstraint(["analysis_id"], ["block_analyses.id"],
                                name="fk_block_errors_analysis_id_block_analyses"),
        sa.PrimaryKeyConstraint("id", name="pk_block_errors"),
    )
    op.create_index("ix_block_errors_analysis_id", "block_errors", ["analysis_id"])
    op.create_table(
        "block_analysis_plans",
        sa.Column("plan_id", sa.Integer, nullable=False),
        sa.Column("analysis_id", sa.Integer, nullable=False),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name="fk_block_analysis_plans_plan_id_plans"),
        sa.ForeignKeyConstraint(["analysis_id"], ["block_analyses.id"],
                                name="fk_block_analysis_plans_analysis_id_block_analyses"),
        sa.PrimaryKeyConstraint("plan_id", name="pk_block_analysis_plans"),
    )
    op.create_index("ix_block_analysis_plans_analysis_id", "block_analysis_plans", ["analysis_id"])


def downgrade() -> None:
    op.drop_index("ix_block_analysis_plans_analysis_id", table_name="block_analysis_plans")
    op.drop_table("block_analysis_plans")
    op.drop_index("ix_block_errors_analysis_id", table_name="block_errors")
    op.drop_table("block_errors")
    op.drop_index("ix_block_analyses_model_id", table_name="block_analyses")
    op.drop_table("block_analyses")
