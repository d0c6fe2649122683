"""Plans know their storage dtype, frames and body hash; runs know what and where they ran.

- plans: `storage_dtype` (from the stored JSON), `frames` (1: image models), `body_hash`
  (sha256 of the plan without `provenance.created`, so tuning one request twice keeps one
  plan), `catalog_model` (False only for plans stored with allow_unknown_model).
- profiles: `frames` (1).
- runs: the workload (height, width, batch, cfg, text_tokens, frames), steps and GPU name of
  the run, and `comparable`: whether the run is of the plan's own workload on its target, the
  only runs that rank a plan. Runs stored before this revision recorded none of that: their
  workload stays unknown (NULL) and they stay comparable only where they ran on CUDA (a CPU run
  of a GPU plan never was a measurement of it).

Data migration with frozen mini-tables; the body hash is computed here exactly as
`db.convert.plan_body_hash` does (sorted keys, compact separators).

Revision ID: 0003_trusted_plans
Revises: 0002_plan_content_hash
Create Date: 2026-12-01
"""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0003_trusted_plans"
down_revision = "0002_plan_content_hash"
branch_labels = None
depends_on = None

plans = sa.table(
    "plans",
    sa.column("id", sa.Integer),
    sa.column("plan_json", sa.Text),
    sa.column("storage_dtype", sa.String),
    sa.column("body_hash", sa.String),
    sa.column("catalog_model", sa.Boolean),
)
runs = sa.table(
    "runs",
    sa.column("id", sa.Integer),
    sa.column("device", sa.String),
    sa.column("comparable", sa.Boolean),
)
_RUN_WORKLOAD = (
    ("height", sa.Integer), ("width", sa.Integer), ("batch", sa.Integer), ("cfg", sa.String(16)),
    ("text_tokens", sa.Integer), ("frames", sa.Integer), ("steps", sa.Integer), ("gpu_name", sa.String(256)),
)


def _body_hash(plan_json: str) -> tuple[str, str]:
    data = json.loads(plan_json)
    data.get("provenance", {}).pop("created", None)
    body = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest(), data["model"]["storage_dtype"]


def upgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.add_column(sa.Column("frames", sa.Integer, nullable=False, server_default="1"))
        batch.add_column(sa.Column("storage_dtype", sa.String(16), nullable=True))
        batch.add_column(sa.Column("body_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("catalog_model", sa.Boolean, nullable=True))
    with op.batch_alter_table("profiles") as batch:
        batch.add_column(sa.Column("frames", sa.Integer, nullable=False, server_default="1"))
    with op.batch_alter_table("runs") as batch:
        for name, kind in _RUN_WORKLOAD:
            batch.add_column(sa.Column(name, kind, nullable=True))
        batch.add_column(sa.Column("comparable", sa.Boolean, nullable=True))

    bind = op.get_bind()
    for plan_id, text in bind.execute(sa.select(plans.c.id, plans.c.plan_json)).all():
        digest, dtype = _body_hash(text)
        bind.execute(
            plans.update().where(plans.c.id == plan_id)
            .values(body_hash=digest, storage_dtype=dtype, catalog_model=True)
        )
    for run_id, device in bind.execute(sa.select(runs.c.id, runs.c.device)).all():
        on_cuda = str(device).startswith("cuda")
        bind.execute(runs.update().where(runs.c.id == run_id).values(comparable=on_cuda))

    with op.batch_alter_table("plans") as batch:
        batch.alter_column("storage_dtype", existing_type=sa.String(16), nullable=False)
        batch.alter_column("body_hash", existing_type=sa.String(64), nullable=False)
        batch.alter_column("catalog_model", existing_type=sa.Boolean, nullable=False)
        batch.create_index("ix_plans_body_hash", ["body_hash"])
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("comparable", existing_type=sa.Boolean, nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("comparable")
        for name, _ in reversed(_RUN_WORKLOAD):
            batch.drop_column(name)
    with op.batch_alter_table("profiles") as batch:
        batch.drop_column("frames")
    with op.batch_alter_table("plans") as batch:
        batch.drop_index("ix_plans_body_hash")
        batch.drop_column("catalog_model")
        batch.drop_column("body_hash")
        batch.drop_column("storage_dtype")
        batch.drop_column("frames")
