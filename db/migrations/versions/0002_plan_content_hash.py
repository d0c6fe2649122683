"""Plans get a content hash, unique: saving or importing the same plan twice keeps one row.

Data migration: every existing plan's hash is the sha256 of its stored JSON text (the store
writes `runtime.plan.dumps_plan` text, and hashes exactly that). Plans stored twice under
0001 are merged into the oldest row; their runs move with them, so no measurement is lost.

Revision ID: 0002_plan_content_hash
Revises: 0001_initial
Create Date: 2025-01-02
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0002_plan_content_hash"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

# Frozen at this revision: only the columns this migration reads or writes.
plans = sa.table(
    "plans",
    sa.column("id", sa.Integer),
    sa.column("plan_json", sa.Text),
    sa.column("content_hash", sa.String),
)
runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("plan_id", sa.Integer))


def upgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.add_column(sa.Column("content_hash", sa.String(64), nullable=True))

    bind = op.get_bind()
    keep: dict[str, int] = {}
    rows = bind.execute(sa.select(plans.c.id, plans.c.plan_json).order_by(plans.c.id)).all()
    for plan_id, text in rows:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if digest in keep:  # the same plan stored twice: its runs join the first copy
            bind.execute(runs.update().where(runs.c.plan_id == plan_id).values(plan_id=keep[digest]))
            bind.execute(plans.delete().where(plans.c.id == plan_id))
            continue
        keep[digest] = plan_id
        bind.execute(plans.update().where(plans.c.id == plan_id).values(content_hash=digest))

    with op.batch_alter_table("plans") as batch:
        batch.alter_column("content_hash", existing_type=sa.String(64), nullable=False)
        batch.create_index("ix_plans_content_hash", ["content_hash"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.drop_index("ix_plans_content_hash")
        batch.drop_column("content_hash")
