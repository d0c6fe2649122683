"""Plans know their run's host RAM peak and disk tier; profiles their disk and host baseline.

- plans: `host_peak_bytes` (the plan file's `predictions.host_peak_bytes`; NULL for plans made
  before it: their host peak was never predicted, so a host-RAM query never ranks them) and
  `disk_bytes` (storage bytes of the blocks on the disk tier; 0 for every older plan, which
  keeps all streamed blocks in RAM).
- profiles: `disk_read_gbps`, `disk_read_under_copy_gbps` and `host_baseline_bytes` (NULL:
  measured before the profiler measured them).

Data migration with a frozen mini-table, reading the stored plan JSON as it was written.

Revision ID: 0005_host_ram_tier
Revises: 0003_trusted_plans
Create Date: 2026-12-06
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0005_host_ram_tier"
down_revision = "0003_trusted_plans"
branch_labels = None
depends_on = None

plans = sa.table(
    "plans",
    sa.column("id", sa.Integer),
    sa.column("plan_json", sa.Text),
    sa.column("host_peak_bytes", sa.BigInteger),
    sa.column("disk_bytes", sa.BigInteger),
)
_PROFILE_COLUMNS = (
    ("disk_read_gbps", sa.Float), ("disk_read_under_copy_gbps", sa.Float), ("host_baseline_bytes", sa.BigInteger),
)


def _host_of(plan_json: str) -> tuple[int | None, int]:
    data = json.loads(plan_json)
    peak = data.get("predictions", {}).get("host_peak_bytes")
    disk = sum(b.get("bytes", 0) for b in data.get("blocks", ()) if b.get("tier") == "disk")
    return peak, disk


def upgrade() -> None:
    with op.batch_alter_table("plans") as batch:
        batch.add_column(sa.Column("host_peak_bytes", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("disk_bytes", sa.BigInteger, nullable=False, server_default="0"))
    with op.batch_alter_table("profiles") as batch:
        for name, kind in _PROFILE_COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))
    bind = op.get_bind()
    for plan_id, text in bind.execute(sa.select(plans.c.id, plans.c.plan_json)).all():
        peak, disk = _host_of(text)
        bind.execute(plans.update().where(plans.c.id == plan_id).values(host_peak_bytes=peak, disk_bytes=disk))


def downgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        for name, _ in reversed(_PROFILE_COLUMNS):
            batch.drop_column(name)
    with op.batch_alter_table("plans") as batch:
        batch.drop_column("disk_bytes")
        batch.drop_column("host_peak_bytes")
