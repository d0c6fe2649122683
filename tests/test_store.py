"""The store's API on SQLite and PostgreSQL: round trips, best-plan choice, errors."""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest

from store_fixtures import make_plan, make_profile, measure, store, store_url  # noqa: F401 (fixtures)
from db.errors import StoreError


def test_profile_round_trip_with_machine_and_blocks(store):
    profile = make_profile()
    profile_id = store.save_profile(profile)
    got = store.get_profile(profile_id)
    assert got == profile.with_id(profile_id)
    assert got.blocks[2].cast_ms == 0.5 and got.bandwidth.by_size[0].pageable_gbps == 3.25
    assert store.list_profiles() == [got]


def test_machine_is_upserted_by_fingerprint(store):
    first = store.save_profile(make_profile(driver="550.54"))
    second = store.save_profile(make_profile(driver="560.10", width=768))
    other = store.save_profile(make_profile(fingerprint="fp-b", hostname="box-b", driver=None))
    profiles = {p.id: p for p in store.list_profiles()}
    assert profiles[first].machine.driver == "560.10"  # one machine row, updated in place
    assert profiles[second].machine == profiles[first].machine
    assert profiles[other].machine.driver is None and profiles[other].machine.hostname == "box-b"
    from sqlalchemy import create_engine, text

    engine = create_engine(store.url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM machines")).scalar() == 2
    engine.dispose()


def test_latest_profile_matches_every_key(store):
    from runtime.dtypes import DType

    older = store.save_profile(make_profile(created="2025-01-01T00:00:00+00:00"))
    newer = store.save_profile(make_profile(created="2025-02-01T00:00:00+00:00"))
    store.save_profile(make_profile(width=768))
    store.save_profile(make_profile(tool_version="0.2.0"))
    workload = make_profile().workload
    found = store.latest_profile("fp-a", "flux-dev", workload, DType.BF16, "0.1.0")
    assert found is not None and found.id == newer != older
    assert store.latest_profile("fp-a", "flux-dev", workload, DType.FP8, "0.1.0") is None
    assert store.latest_profile("fp-zz", "flux-dev", workload, DType.BF16, "0.1.0") is None
    assert store.latest_profile("fp-a", "flux-schnell", workload, DType.BF16, "0.1.0") is None


def test_plan_round_trip_and_idempotent_save(store):
    plan = make_plan(step_ms=1234.5)
    plan_id = store.save_plan(plan)
    assert store.save_plan(plan) == plan_id
    assert store.find_plan(plan) == plan_id
    assert store.save_plan(make_plan(step_ms=1234.75)) != plan_id
    stored = store.get_plan(plan_id)
    assert stored.plan == plan
    assert (stored.id, stored.runs, stored.best_measured_ms) == (plan_id, 0, None)
    assert stored.created.tzinfo is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        stored.runs = 3


def test_plan_keeps_profile_link_only_when_the_profile_is_here(store):
    from sqlalchemy import create_engine, text

    profile_id = store.save_profile(make_profile())
    linked = store.save_plan(make_plan(profile_id=profile_id))
    foreign = store.save_plan(make_plan(step_ms=7.0, profile_id=999_999))
    engine = create_engine(store.url)
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT id, profile_id FROM plans")).all())
    engine.dispose()
    assert rows == {linked: profile_id, foreign: None}
    assert store.get_plan(foreign).plan.provenance.profile_id == 999_999  # the JSON keeps it


def test_runs_round_trip_and_remove(store):
    plan_id = store.save_plan(make_plan())
    other = store.save_plan(make_plan(step_ms=5.0))
    run_a = measure(store, plan_id, 950.0, 7 << 30)
    run_b = measure(store, plan_id, 900.5, 7 << 30)
    store.record_run(other, 4.0, 1, "cuda:1")
    assert run_b > run_a
    stored = store.get_plan(plan_id)
    assert (stored.runs, stored.best_measured_ms) == (2, 900.5)
    store.remove_plan(plan_id)
    assert [p.id for p in store.list_plans()] == [other]
    assert store.get_plan(other).runs == 1
    from db.errors import NotFound

    with pytest.raises(NotFound, match=f"no plan {plan_id}"):
        store.remove_plan(plan_id)
    with pytest.raises(NotFound, match=f"no plan {plan_id}"):
        store.get_plan(plan_id)
    with pytest.raises(NotFound, match=f"no plan {plan_id}"):
        store.record_run(plan_id, 1.0, 1, "cuda:0")
    with pytest.raises(NotFound, match="no profile 424242"):
        store.get_profile(424242)


def test_record_run_refuses_nonsense(store):
    from runtime.errors import UserError

    plan_id = store.save_plan(make_plan())
    for step_ms, peak in [(float("nan"), 1), (-1.0, 1), (10.0, -5)]:
        with pytest.raises(UserError):
            store.record_run(plan_id, step_ms, peak, "cuda:0")
    assert store.get_plan(plan_id).runs == 0


def test_list_plans_filters(store):
    a = store.save_plan(make_plan(step_ms=1, gpu="NVIDIA GeForce RTX 4060", budget=8 << 30))
    b = store.save_plan(make_plan(step_ms=2, gpu="rtx-4060", budget=6 << 30, width=768))
    c = store.save_plan(make_plan(step_ms=3, gpu="NVIDIA GeForce RTX 3090", budget=24 << 30))
    assert [p.id for p in store.list_plans()] == [a, b, c]
    assert [p.id for p in store.list_plans(gpu="RTX 4060")] == [a, b]
    assert [p.id for p in store.list_plans(max_vram=8 << 30)] == [a, b]
    assert [p.id for p in store.list_plans(resolution="768x1024")] == [b]
    assert [p.id for p in store.list_plans(resolution=(1024, 1024), gpu="geforce rtx 3090")] == [c]
    assert store.list_plans(model="flux-dev") == []


def test_best_plan_across_machines_prefers_measured(store):
    # Three machines with the same card; budgets 6, 8 and 12 GiB.
    small = store.save_plan(make_plan(step_ms=3000.0, gpu="NVIDIA GeForce RTX 4060", budget=6 << 30))
    mid = store.save_plan(make_plan(step_ms=2000.0, gpu="GeForce RTX 4060", budget=8 << 30))
    big = store.save_plan(make_plan(step_ms=1000.0, gpu="rtx 4060", budget=12 << 30))
    store.save_plan(make_plan(step_ms=10.0, gpu="NVIDIA GeForce RTX 4090", budget=6 << 30))

    assert store.best_plan("tiny-flux", 12 << 30, gpu="rtx-4060").id == big
    assert store.best_plan("tiny-flux", 8 << 30, gpu="rtx-4060").id == mid
    assert store.best_plan("tiny-flux", 7 << 30, gpu="RTX 4060").id == small
    assert store.best_plan("tiny-flux", 5 << 30, gpu="rtx 4060") is None
    assert store.best_plan("tiny-flux", 8 << 30, gpu="rtx 4060", resolution="512x512") is None
    assert store.best_plan("flux-dev", 64 << 30) is None
    with pytest.raises(StoreError, match="not comparable"):  # issue 25: never across GPUs
        store.best_plan("tiny-flux", 8 << 30)

    # Measured beats predicted: the 6 GiB plan really runs in 1500 ms, faster than 8 GiB's 2000.
    measure(store, small, 1500.0, 5 << 30)
    assert store.best_plan("tiny-flux", 8 << 30, gpu="rtx 4060").id == small
    # ... and a measured run slower than its prediction ranks by the measurement.
    measure(store, big, 2500.0, 11 << 30)
    measure(store, big, 2400.0, 11 << 30)
    best = store.best_plan("tiny-flux", 12 << 30, gpu="rtx 4060")
    assert (best.id, best.best_measured_ms) == (small, 1500.0)
    assert store.get_plan(big).best_measured_ms == 2400.0


def test_gpu_name_normaliser():
    from profiler.gpus import normalize as normalize_gpu_name
    from profiler.gpus import same_gpu

    assert normalize_gpu_name("NVIDIA GeForce RTX 4060") == "rtx-4060"
    assert same_gpu("NVIDIA GeForce RTX 4060", "rtx-4060") and same_gpu("Rtx_4060 ", "rtx 4060")
    assert normalize_gpu_name("NVIDIA RTX A6000") == "rtx-a6000"
    assert not same_gpu("rtx 4060", "rtx 4060 ti")


def test_store_refuses_use_after_close(store_url):
    from db.errors import StoreError
    from db.store import open_store

    store = open_store(store_url)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.list_plans()


def test_default_url_from_env_and_user_data_dir(monkeypatch, tmp_path):
    from db.store import default_db_url, open_store

    monkeypatch.delenv("PLANNER_DB_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert default_db_url() == f"sqlite:///{tmp_path / 'xdg' / 'offload-planner' / 'planner.db'}"
        with open_store() as store:
            store.save_plan(make_plan())
        assert (tmp_path / "xdg" / "offload-planner" / "planner.db").is_file()
    monkeypatch.setenv("PLANNER_DB_URL", f"sqlite:///{tmp_path / 'env.db'}")
    assert default_db_url() == f"sqlite:///{tmp_path / 'env.db'}"
    with open_store() as store:
        assert store.list_plans() == []
    assert (tmp_path / "env.db").is_file()


def test_directory_that_cannot_be_created(tmp_path):
    from db.errors import StoreError
    from db.store import open_store

    (tmp_path / "a-file").write_text("not a directory")
    path = tmp_path / "a-file" / "sub" / "planner.db"
    with pytest.raises(StoreError) as info:
        open_store(f"sqlite:///{path}")
    message = str(info.value)
    assert str(tmp_path / "a-file" / "sub") in message and "--db" in message
    assert "\n" not in message


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's read-only filesystem")
def test_read_only_path_even_for_root():
    from db.errors import StoreError
    from db.store import open_store

    with pytest.raises(StoreError) as info:
        open_store("sqlite:////proc/planner.db")
    assert "/proc/planner.db" in str(info.value) and "--db" in str(info.value)


def test_read_only_directory(tmp_path):
    from db.errors import StoreError
    from db.store import open_store

    if os.geteuid() == 0:
        pytest.skip("root writes through directory permissions; the /proc test covers root")
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(StoreError, match=str(locked / "planner.db")):
            open_store(f"sqlite:///{locked / 'planner.db'}")
    finally:
        locked.chmod(0o755)


def test_unreachable_postgres_is_a_clear_error():
    from db.errors import StoreError
    from db.store import open_store

    with pytest.raises(StoreError, match="check the URL and that the server is running"):
        open_store("postgresql+psycopg://nobody:secret@127.0.0.1:1/none?connect_timeout=2")


def test_bad_url_is_a_clear_error():
    from db.errors import StoreError
    from db.store import open_store

    with pytest.raises(StoreError, match="not a SQLAlchemy URL"):
        open_store("not a url")
