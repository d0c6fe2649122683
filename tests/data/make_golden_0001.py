"""How tests/data/golden_0001.db was made: a store at revision 0001_initial with rows in
every table, written with plain SQL (the ORM is at head and must not be used here).

    .venv/bin/python tests/data/make_golden_0001.py        # rewrites tests/data/golden_0001.db

tests/test_migrations.py upgrades a copy of the file and checks every row survives; it also
calls `fill_0001` on a fresh 0001 database on each backend (SQLite and PostgreSQL).
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden_0001.db"

# Expected row counts: the migration test checks these after upgrading.
COUNTS = {"machines": 2, "profiles": 2, "profile_blocks": 5, "plans": 3, "runs": 4}
WHEN = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


def plan_texts() -> list[str]:
    """Three distinct plan files (runtime.plan.dumps_plan text) for tiny-flux."""
    sys.path.insert(0, str(HERE.parent))
    from store_fixtures import make_plan

    from runtime.plan import dumps_plan

    return [
        dumps_plan(make_plan(step_ms=1000.0, gpu="NVIDIA GeForce RTX 4060", budget=8 << 30, profile_id=1)),
        dumps_plan(make_plan(step_ms=1500.0, gpu="NVIDIA GeForce RTX 4060", budget=6 << 30, streamed=4)),
        dumps_plan(make_plan(step_ms=700.0, gpu="NVIDIA GeForce RTX 3090", budget=24 << 30, streamed=0)),
    ]


def fill_0001(connection, texts: list[str]) -> None:
    """Rows in every table of a database at revision 0001_initial."""
    from sqlalchemy import text

    run = lambda sql, **params: connection.execute(text(sql), params)  # noqa: E731
    # As SQLAlchemy's DateTime writes it: SQLite gets its text form (UTC, no zone).
    when = WHEN.strftime("%Y-%m-%d %H:%M:%S.%f") if connection.dialect.name == "sqlite" else WHEN
    for i, (host, gpu) in enumerate([("box-a", "NVIDIA GeForce RTX 4060"), ("box-b", "NVIDIA GeForce RTX 3090")], 1):
        run(
            "INSERT INTO machines (id, fingerprint, hostname, gpu_name, gpu_memory_bytes, pcie_gen, pcie_width,"
            " pcie_gen_max, pcie_width_max, driver, cuda, torch, host_ram_bytes) VALUES (:id, :fp, :host, :gpu,"
            " :mem, 4, 8, 4, 16, :driver, '12.4', '2.5.0', :ram)",
            id=i, fp=f"fp-{host}", host=host, gpu=gpu, mem=(8 << 30) * i, driver="550.54" if i == 1 else None,
            ram=64 << 30,
        )
    for pid, machine_id, blocks in [(1, 1, 3), (2, 2, 2)]:
        run(
            "INSERT INTO profiles (id, machine_id, model_id, height, width, batch, cfg, text_tokens, storage_dtype,"
            " compute_dtype, pinned_gbps, pageable_gbps, pinned_under_compute_gbps, copy_overhead_us,"
            " bandwidth_by_size, device, non_block_ms, non_block_bytes, workspace_bytes, is_estimate, source,"
            " tool_version, created) VALUES (:id, :m, 'flux-dev', 1024, 1024, 1, 'none', 512, 'bf16', 'bf16',"
            " 12.5, 6.25, 11.75, 6.5, :bw, 'cuda:0', 12.125, :nb, :ws, :est, :src, '0.1.0', :created)",
            id=pid, m=machine_id, bw="[[1048576, 8.5, 3.25], [268435456, 12.5, 6.25]]", nb=3 << 30, ws=600 << 20,
            est=pid == 2, src="measured on cuda:0" if pid == 1 else "RTX 3090 spec sheet",
            created="2025-01-01T00:00:00+00:00",
        )
        for b in range(blocks):
            run(
                "INSERT INTO profile_blocks (profile_id, block_index, name, kind, bytes, compute_ms, cast_ms,"
                " activation_bytes) VALUES (:p, :i, :name, 'double', :bytes, :ms, 0.0, :act)",
                p=pid, i=b, name=f"transformer_blocks.{b}", bytes=679_700_000 + b, ms=55.5 + b, act=300 << 20,
            )
    for i, plan_json in enumerate(texts, 1):
        import json

        d = json.loads(plan_json)
        run(
            "INSERT INTO plans (id, model_id, gpu_name, budget_bytes, height, width, batch, cfg, text_tokens,"
            " plan_json, predicted_step_ms, predicted_peak_bytes, profile_id, created) VALUES (:id, :model, :gpu,"
            " :budget, :h, :w, 1, 'none', 512, :js, :ms, :peak, :prof, :created)",
            id=i, model=d["model"]["id"], gpu=d["target"]["gpu_name"], budget=d["target"]["vram_budget_bytes"],
            h=d["workload"]["height"], w=d["workload"]["width"], js=plan_json, ms=d["predictions"]["step_ms"],
            peak=d["predictions"]["peak_vram_bytes"], prof=d["provenance"]["profile_id"], created=when,
        )
    for plan_id, step_ms in [(1, 990.0), (1, 980.5), (2, 1600.0), (3, 650.0)]:
        run(
            "INSERT INTO runs (plan_id, step_ms, peak_vram_bytes, device, created)"
            " VALUES (:p, :ms, :peak, 'cuda:0', :created)",
            p=plan_id, ms=step_ms, peak=7 << 30, created=when,
        )


def make_0001(url: str, texts: list[str]) -> None:
    """A database at 0001_initial holding the golden rows."""
    from alembic import command

    from db.migrate import alembic_config
    from db.session import make_engine

    engine = make_engine(url, foreign_keys=False)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0001_initial")
            fill_0001(connection, texts)
    finally:
        engine.dispose()


def main() -> None:
    sys.path.insert(0, str(HERE.parent.parent))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{GOLDEN}{suffix}").unlink(missing_ok=True)
    make_0001(f"sqlite:///{GOLDEN}", plan_texts())
    import sqlite3

    with sqlite3.connect(GOLDEN) as conn:  # fold the WAL in: one self-contained file
        conn.execute("PRAGMA journal_mode = DELETE")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
