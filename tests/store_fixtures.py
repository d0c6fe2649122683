"""Fixtures and builders the store tests share: one suite, SQLite and PostgreSQL.

`store_url` gives a fresh, empty database URL: a SQLite file in tmp_path, and, when
PLANNER_TEST_POSTGRES_URL names a server, a fresh schema on it (dropped afterwards).
Import what a test file needs: `from store_fixtures import store_url, make_plan, ...`.
"""

from __future__ import annotations

import functools
import os
import uuid

import pytest

POSTGRES_ENV = "PLANNER_TEST_POSTGRES_URL"
HEAD = "0007_block_analysis"  # the newest migration (db/migrations/versions)


def _postgres_schema_url():
    """A fresh schema on the test server: (url whose search_path is that schema, drop)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(os.environ[POSTGRES_ENV])
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = base.update_query_dict({"options": f"-csearch_path={schema}"})

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return url.render_as_string(hide_password=False), drop


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'planner.db'}"
        return
    if not os.environ.get(POSTGRES_ENV):
        pytest.skip(f"PostgreSQL half skipped: set {POSTGRES_ENV}=postgresql+psycopg://... to run it")
    url, drop = _postgres_schema_url()
    yield url
    drop()


@pytest.fixture
def store(store_url):
    from db.store import open_store

    with open_store(store_url) as s:
        yield s


@functools.lru_cache(maxsize=None)
def tiny_inventory():
    from runtime.inventory import inventory

    return inventory("tiny-flux")


def make_plan(
    step_ms: float = 1000.0,
    gpu: str = "NVIDIA GeForce RTX 4060",
    budget: int = 8 << 30,
    width: int = 1024,
    height: int = 1024,
    streamed: int = 2,
    profile_id: int | None = None,
    model: str = "tiny-flux",
    text_tokens: int | None = None,
):
    """A plan the store accepts: the catalog model's own blocks, at its text length."""
    from runtime.catalog import get_model
    from runtime.inventory import inventory
    from runtime.plan import Predictions, Target, build_plan
    from runtime.workload import Workload

    inv = tiny_inventory() if model == "tiny-flux" else inventory(model)
    names = {b.name for b in inv.blocks[:streamed]}
    return build_plan(
        inv,
        names,
        workload=Workload(height=height, width=width, text_tokens=text_tokens or get_model(model).text_tokens),
        target=Target(gpu_name=gpu, vram_budget_bytes=budget),
        predictions=Predictions(step_ms=step_ms, peak_vram_bytes=budget - (1 << 20), lower_bound_ms=step_ms / 2),
        profile_id=profile_id,
        created="2025-01-01T00:00:00+00:00",
    )


def make_profile(
    fingerprint: str = "fp-a",
    gpu: str = "NVIDIA GeForce RTX 4060",
    hostname: str = "box-a",
    driver: str | None = "550.54",
    width: int = 1024,
    tool_version: str = "0.1.0",
    created: str = "2025-01-01T00:00:00+00:00",
):
    from profiler.types import Bandwidth, BandwidthPoint, BlockProfile, MachineFacts, Profile
    from runtime.dtypes import DType
    from runtime.workload import CfgMode, Workload

    machine = MachineFacts(
        fingerprint=fingerprint, hostname=hostname, gpu_name=gpu, gpu_memory_bytes=8 << 30,
        pcie_gen=4, pcie_width=8, pcie_gen_max=4, pcie_width_max=16, driver=driver, cuda="12.4",
        torch="2.5.0", host_ram_bytes=64 << 30,
    )
    blocks = tuple(
        BlockProfile(name=f"transformer_blocks.{i}", kind="double", index=i, bytes=679_700_000 + i,
                     compute_ms=55.5 + i, cast_ms=0.25 * i, activation_bytes=(300 + i) << 20)
        for i in range(3)
    )
    return Profile(
        machine=machine,
        device="cuda:0",
        model_id="flux-dev",
        workload=Workload(height=1024, width=width, batch=1, cfg=CfgMode.NONE, text_tokens=512),
        storage_dtype=DType.BF16,
        compute_dtype=DType.BF16,
        bandwidth=Bandwidth(
            pinned_gbps=12.5, pageable_gbps=6.25, pinned_under_compute_gbps=11.75, copy_overhead_us=6.5,
            by_size=(BandwidthPoint(1 << 20, 8.5, 3.25), BandwidthPoint(1 << 28, 12.5, 6.25)),
        ),
        blocks=blocks,
        non_block_ms=12.125,
        non_block_bytes=3 << 30,
        workspace_bytes=600 << 20,
        is_estimate=False,
        source="measured on cuda:0",
        tool_version=tool_version,
        created=created,
    )


def measure(store, plan_id: int, step_ms: float, peak: int = 1 << 30, gpu: str | None = None, steps: int = 4) -> int:
    """Record a run of the plan's own workload on its target GPU (or on `gpu`)."""
    plan = store.get_plan(plan_id).plan
    return store.record_run(
        plan_id, step_ms, peak, "cuda:0", workload=plan.workload, steps=steps,
        gpu_name=gpu or plan.target.gpu_name,
    )
