"""The store's public API: machines, profiles, plans and measured runs.

    with open_store() as store:            # --db URL, else PLANNER_DB_URL, else the default file
        plan_id = store.save_plan(plan)    # checked against the catalog; same plan, same id
        store.record_run(plan_id, step_ms=3120.0, peak_vram_bytes=7 << 30, device="cuda:0",
                         workload=plan.workload, steps=28, gpu_name="NVIDIA GeForce RTX 4060")
        best = store.best_plan("flux-dev", vram_bytes=8 << 30, gpu="rtx 4060", workload=workload)

Every method runs in one transaction (db/session.py) and returns frozen dataclasses. The store
keeps only plans that can run on the catalog model they name (db/plan_check.py); a measured
run ranks its plan only where it ran the plan's own workload on the plan's target GPU.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, TypeVar

from db.convert import StoredPlan, machine_values, plan_body_hash, plan_row, plan_text_and_hash
from db.convert import profile_row, to_profile, to_stored_plan
from db.errors import NotFound, StoreError
from profiler.gpus import normalize as normalize_gpu_name
from db.location import default_db_url, resolve_url, safe_url
from db.matching import run_is_comparable, workload_matches
from profiler.types import Profile
from runtime.analysis.table import BlockError, BlockOption, SensitivityTable
from runtime.dtypes import DType
from runtime.plan import Plan
from runtime.workload import Workload

__all__ = ["Store", "StoredPlan", "ProfileRun", "open_store", "default_db_url", "run_is_comparable", "workload_matches"]
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ProfileRun:
    """A comparable measured run of a plan made from a stored profile (`Store.runs_of_profile`)."""

    run_id: int
    plan_id: int
    plan: Plan
    step_ms: float
    peak_vram_bytes: int  # 0 where the device reports none (a CPU run)
    gpu_name: str


def open_store(url: str | None = None, *, busy_timeout_s: float = 1.0, retries: int = 3) -> "Store":
    """Open (and at first use create) the store at `url`; refuse a database at an old revision."""
    from sqlalchemy.exc import SQLAlchemyError

    from db.migrate import check_schema
    from db.session import make_engine, translate

    url = resolve_url(url)
    engine = make_engine(url, busy_timeout_s=busy_timeout_s)
    try:
        check_schema(engine, url)
    except SQLAlchemyError as e:
        engine.dispose()
        raise translate(e, url) from e
    except BaseException:
        engine.dispose()
        raise
    return Store(url, engine, retries)


class Store:
    def __init__(self, url: str, engine, retries: int) -> None:
        self.url = url
        self._engine = engine
        self._retries = retries

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _run(self, work: Callable[..., T], *, write: bool = True) -> T:
        from db.session import run_transaction

        if self._engine is None:
            raise StoreError(f"the store {self.url} is closed: open it again with open_store()")
        return run_transaction(self._engine, self.url, work, write=write, retries=self._retries)

    # ------------------------------------------------------------ profiles

    def save_profile(self, profile: Profile) -> int:
        """Store a profile and its blocks; the machine is found (or updated) by fingerprint."""
        from sqlalchemy import select

        from db.models import Machine

        def work(session) -> int:
            values = machine_values(profile.machine)
            machine = session.scalars(
                select(Machine).where(Machine.fingerprint == profile.machine.fingerprint)
            ).one_or_none()
            if machine is None:
                machine = Machine(**values)
                session.add(machine)
            else:  # same machine, newer facts (a driver update, a new torch)
                for name, value in values.items():
                    setattr(machine, name, value)
            row = profile_row(profile, machine)
            session.add(row)
            session.flush()
            return row.id

        try:
            return self._run(work)
        except StoreError as e:
            from sqlalchemy.exc import IntegrityError

            if not isinstance(e.__cause__, IntegrityError):
                raise
            return self._run(work)  # another process added this machine first: now we update it

    def get_profile(self, profile_id: int) -> Profile:
        from db.models import ProfileRow

        _check_id(profile_id, "profile", self.url)

        def work(session) -> Profile:
            row = session.get(ProfileRow, profile_id)
            if row is None:
                raise NotFound(f"no profile {profile_id} in {self.url}: `planner profiles list` shows the ids")
            return to_profile(row)

        return self._run(work, write=False)

    def latest_profile(
        self, fingerprint: str, model_id: str, workload: Workload, storage_dtype: DType, tool_version: str
    ) -> Profile | None:
        """The newest profile of this machine, model, workload, dtype and tool version."""
        from sqlalchemy import select

        from db.models import Machine, ProfileRow

        query = (
            select(ProfileRow)
            .join(Machine)
            .where(
                Machine.fingerprint == fingerprint,
                ProfileRow.model_id == model_id,
                ProfileRow.height == workload.height,
                ProfileRow.width == workload.width,
                ProfileRow.batch == workload.batch,
                ProfileRow.cfg == workload.cfg.value,
                ProfileRow.text_tokens == workload.text_tokens,
                ProfileRow.frames == workload.frames,
                ProfileRow.storage_dtype == DType(storage_dtype).value,
                ProfileRow.tool_version == tool_version,
            )
            .order_by(ProfileRow.id.desc())
            .limit(1)
        )

        def work(session) -> Profile | None:
            row = session.scalars(query).one_or_none()
            return None if row is None else to_profile(row)

        return self._run(work, write=False)

    def list_profiles(self) -> list[Profile]:
        from sqlalchemy import select
        from sqlalchemy.orm import selectinload

        from db.models import ProfileRow

        query = (
            select(ProfileRow)
            .options(selectinload(ProfileRow.machine), selectinload(ProfileRow.blocks))
            .order_by(ProfileRow.id)
        )
        return self._run(lambda s: [to_profile(r) for r in s.scalars(query)], write=False)

    # ------------------------------------------------------------ plans

    def save_plan(self, plan: Plan, *, allow_unknown_model: bool = False) -> int:
        """Store a plan that can run on its catalog model; the same plan stored again (even with
        another creation time: the same request tuned twice) returns the first id.

        A plan for a model the catalog lacks is refused unless `allow_unknown_model`; it is
        then kept but never returned by `best_plan`."""
        from sqlalchemy import select
        from sqlalchemy.exc import IntegrityError

        from db.models import PlanRow, ProfileRow
        from db.plan_check import check_storable

        known = check_storable(plan, allow_unknown_model=allow_unknown_model)
        text, digest = plan_text_and_hash(plan)
        body = plan_body_hash(plan)
        by_hash = select(PlanRow.id).where(PlanRow.content_hash == digest)
        by_body = select(PlanRow.id).where(PlanRow.body_hash == body).order_by(PlanRow.id).limit(1)

        def work(session) -> int:
            existing = session.scalar(by_hash)
            if existing is None:
                existing = session.scalar(by_body)
            if existing is not None:
                return existing
            profile_id = plan.provenance.profile_id
            if profile_id is not None and session.get(ProfileRow, profile_id) is None:
                profile_id = None  # made from a profile in another store: the JSON keeps the id
            row = plan_row(plan, text, digest, profile_id, catalog_model=known)
            session.add(row)
            session.flush()
            return row.id

        try:
            return self._run(work)
        except StoreError as e:
            if not isinstance(e.__cause__, IntegrityError):
                raise
            found = self._run(lambda s: s.scalar(by_hash), write=False)  # lost a race to a twin
            if found is None:
                raise
            return found

    def find_plan(self, plan: Plan) -> int | None:
        """The id this plan is stored under (same content, or same plan made at another time)."""
        from sqlalchemy import or_, select

        from db.models import PlanRow

        digest, body = plan_text_and_hash(plan)[1], plan_body_hash(plan)
        query = (
            select(PlanRow.id)
            .where(or_(PlanRow.content_hash == digest, PlanRow.body_hash == body))
            .order_by(PlanRow.id)
            .limit(1)
        )
        return self._run(lambda s: s.scalar(query), write=False)

    def get_plan(self, plan_id: int) -> StoredPlan:
        from db.models import PlanRow

        _check_id(plan_id, "plan", self.url)

        def work(session) -> StoredPlan:
            rows = session.execute(_plans_query().where(PlanRow.id == plan_id)).all()
            if not rows:
                raise NotFound(f"no plan {plan_id} in {self.url}: `planner plans list` shows the ids")
            return to_stored_plan(*rows[0])

        return self._run(work, write=False)

    def list_plans(
        self,
        model: str | None = None,
        gpu: str | None = None,
        max_vram: int | None = None,
        resolution: str | tuple[int, int] | None = None,
        *,
        storage_dtype: DType | None = None,
        workload: Workload | None = None,
        max_host_ram: int | None = None,
        ram_only: bool = False,
    ) -> list[StoredPlan]:
        """Stored plans, oldest first, filtered by model, GPU name, budget, resolution, storage
        dtype and workload (see `workload_matches`), the host RAM their run needs at its peak
        (a plan that never predicted it does not match a host-RAM limit) and, `ram_only`, no
        block on the disk tier."""
        from db.models import PlanRow

        query = _plans_query().order_by(PlanRow.id)
        if max_host_ram is not None:
            query = query.where(PlanRow.host_peak_bytes.is_not(None), PlanRow.host_peak_bytes <= max_host_ram)
        if ram_only:
            query = query.where(PlanRow.disk_bytes == 0)
        if model is not None:
            query = query.where(PlanRow.model_id == model)
        if max_vram is not None:
            query = query.where(PlanRow.budget_bytes <= max_vram)
        if resolution is not None:
            width, height = _resolution(resolution)
            query = query.where(PlanRow.width == width, PlanRow.height == height)
        if storage_dtype is not None:
            query = query.where(PlanRow.storage_dtype == DType(storage_dtype).value)
        if workload is not None:
            query = query.where(
                PlanRow.height == workload.height, PlanRow.width == workload.width,
                PlanRow.batch == workload.batch, PlanRow.text_tokens == workload.text_tokens,
                PlanRow.frames == workload.frames,
            )
        wanted = None if gpu is None else normalize_gpu_name(gpu)

        def work(session) -> list[StoredPlan]:
            found = [
                to_stored_plan(*row)
                for row in session.execute(query)
                if wanted is None or normalize_gpu_name(row[0].gpu_name) == wanted
            ]
            return [p for p in found if workload is None or workload_matches(p.plan.workload, workload)]

        return self._run(work, write=False)

    def best_plan(
        self,
        model: str,
        vram_bytes: int,
        gpu: str | None = None,
        resolution: str | None = None,
        *,
        storage_dtype: DType | None = None,
        workload: Workload | None = None,
        max_host_ram: int | None = None,
        ram_only: bool = False,
    ) -> StoredPlan | None:
        """The fastest plan that fits `vram_bytes` for this model, dtype and workload: best
        comparable measured time, else predicted. Only plans that run on the catalog model
        (checked again now: the catalog may have changed since they were stored) compete, and
        only on one GPU: without `gpu`, plans for several GPUs are refused, never compared."""
        from db.plan_check import fits_catalog

        plans = self.list_plans(
            model=model, gpu=gpu, max_vram=vram_bytes, resolution=resolution,
            storage_dtype=storage_dtype, workload=workload, max_host_ram=max_host_ram, ram_only=ram_only,
        )
        plans = [p for p in plans if p.catalog_model and fits_catalog(p.plan)]
        gpus = sorted({p.plan.target.gpu_name for p in plans}, key=normalize_gpu_name)
        if gpu is None and len({normalize_gpu_name(g) for g in gpus}) > 1:
            raise StoreError(
                f"stored plans for {model} in {safe_url(self.url)} target {len(gpus)} GPUs ({', '.join(gpus)}), "
                f"whose times are not comparable: pass --gpu NAME (one of them)"
            )
        return min(plans, key=lambda p: (p.ranking_ms, p.id), default=None)

    def remove_plan(self, plan_id: int) -> None:
        """Remove a plan, its measured runs and its link to the block analysis it came from."""
        from sqlalchemy import delete

        from db.models import BlockAnalysisPlanRow, PlanRow, RunRow

        _check_id(plan_id, "plan", self.url)

        def work(session) -> None:
            if session.get(PlanRow, plan_id) is None:
                raise NotFound(f"no plan {plan_id} in {self.url}: `planner plans list` shows the ids")
            session.execute(delete(RunRow).where(RunRow.plan_id == plan_id))
            session.execute(delete(BlockAnalysisPlanRow).where(BlockAnalysisPlanRow.plan_id == plan_id))
            session.execute(delete(PlanRow).where(PlanRow.id == plan_id))

        self._run(work)

    # ------------------------------------------------------------ runs

    def record_run(
        self,
        plan_id: int,
        step_ms: float,
        peak_vram_bytes: int,
        device: str,
        *,
        workload: Workload | None = None,
        steps: int | None = None,
        gpu_name: str | None = None,
    ) -> int:
        """Store one measured run of a stored plan, with what ran and where. It ranks the plan
        (is comparable) only where `workload` is the plan's and `gpu_name` its target; any other
        run is kept as a run of another workload or device."""
        import math

        from db.models import PlanRow, RunRow

        if not (isinstance(step_ms, (int, float)) and math.isfinite(step_ms) and step_ms > 0):
            raise StoreError(f"step_ms {step_ms!r} is not a measured time: give a positive number of ms")
        if not isinstance(peak_vram_bytes, int) or peak_vram_bytes < 0:
            raise StoreError(f"peak_vram_bytes {peak_vram_bytes!r} is not a size: give bytes, zero or more")
        _check_id(plan_id, "plan", self.url)
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise StoreError(f"steps {steps!r} is not a step count: give 1 or more")
        w = workload

        def work(session) -> int:
            plan_row = session.get(PlanRow, plan_id)
            if plan_row is None:
                raise NotFound(f"no plan {plan_id} in {self.url}: store the plan before its runs")
            from runtime.plan import loads_plan

            plan = loads_plan(plan_row.plan_json, source=f"stored plan {plan_id}")
            row = RunRow(
                plan_id=plan_id, step_ms=float(step_ms), peak_vram_bytes=peak_vram_bytes, device=device,
                height=w.height if w else None, width=w.width if w else None,
                batch=w.batch if w else None, cfg=w.cfg.value if w else None,
                text_tokens=w.text_tokens if w else None,
                frames=w.frames if w else None,
                steps=steps, gpu_name=gpu_name,
                comparable=run_is_comparable(plan, w, gpu_name),
            )
            session.add(row)
            session.flush()
            return row.id

        return self._run(work)

    def runs_of_profile(self, profile_id: int) -> list[ProfileRun]:
        """Comparable runs (the plan's own workload on its target GPU) of every plan made from
        profile `profile_id`, oldest first: what planner.calibration learns from."""
        from sqlalchemy import select

        from db.models import PlanRow, RunRow
        from runtime.plan import loads_plan

        _check_id(profile_id, "profile", self.url)
        query = (
            select(RunRow.id, RunRow.plan_id, PlanRow.plan_json, RunRow.step_ms, RunRow.peak_vram_bytes,
                   RunRow.gpu_name)
            .join(PlanRow, RunRow.plan_id == PlanRow.id)
            .where(PlanRow.profile_id == profile_id, RunRow.comparable.is_(True))
            .order_by(RunRow.id)
        )

        def work(session) -> list[ProfileRun]:
            return [
                ProfileRun(run_id, plan_id, loads_plan(text, source=f"stored plan {plan_id}"), step_ms,
                           peak, gpu or "")
                for run_id, plan_id, text, step_ms, peak, gpu in session.execute(query)
            ]

        return self._run(work, write=False)

    # ------------------------------------------------------------ block analyses

    def save_block_analysis(self, table: SensitivityTable, profile_id: int | None = None) -> int:
        """Store `planner analyze`'s table (beside profile `profile_id` where given)."""
        from db.models import BlockAnalysisRow, BlockErrorRow, ProfileRow

        def work(session) -> int:
            if profile_id is not None and session.get(ProfileRow, profile_id) is None:
                raise NotFound(f"no profile {profile_id} in {self.url}: `planner profiles list` "
                               f"shows the ids")
            row = BlockAnalysisRow(model_id=table.model_id, profile_id=profile_id,
                                   inputs=table.inputs)
            row.errors = [BlockErrorRow(block=e.block, kind=e.kind, option=e.option.name,
                                        rel_error=e.rel_error,
                                        pruned={p: list(u) for p, u in e.pruned} or None)
                          for e in table.rows]
            session.add(row)
            session.flush()
            return row.id

        return self._run(work)

    def latest_block_analysis(self, model_id: str, profile_id: int | None = None
                              ) -> "StoredBlockAnalysis | None":
        """The newest table of `model_id` (of profile `profile_id` where given); None if none."""
        from sqlalchemy import select

        from db.models import BlockAnalysisRow

        query = select(BlockAnalysisRow).where(BlockAnalysisRow.model_id == model_id)
        if profile_id is not None:
            query = query.where(BlockAnalysisRow.profile_id == profile_id)

        def work(session) -> StoredBlockAnalysis | None:
            row = session.scalars(query.order_by(BlockAnalysisRow.id.desc()).limit(1)).first()
            if row is None:
                return None
            return StoredBlockAnalysis(row.id, row.profile_id, SensitivityTable(
                row.model_id, row.inputs,
                tuple(BlockError(e.block, e.kind, BlockOption.parse(e.option), e.rel_error,
                                 tuple((p, tuple(u)) for p, u in (e.pruned or {}).items()))
                      for e in row.errors)))

        return self._run(work, write=False)

    def link_plan_to_analysis(self, plan_id: int, analysis_id: int) -> None:
        """Remember that plan `plan_id` was made from block analysis `analysis_id`."""
        from db.models import BlockAnalysisPlanRow

        def work(session) -> None:
            if session.get(BlockAnalysisPlanRow, plan_id) is None:
                session.add(BlockAnalysisPlanRow(plan_id=plan_id, analysis_id=analysis_id))

        self._run(work)

    def analysis_of_plan(self, plan_id: int) -> int | None:
        """The block analysis plan `plan_id` was made from; None for other plans."""
        from db.models import BlockAnalysisPlanRow

        def work(session) -> int | None:
            row = session.get(BlockAnalysisPlanRow, plan_id)
            return row.analysis_id if row is not None else None

        return self._run(work, write=False)


@dataclasses.dataclass(frozen=True)
class StoredBlockAnalysis:
    analysis_id: int
    profile_id: int | None
    table: SensitivityTable

MAX_ID = 2**63 - 1  # ids are signed 64-bit integers on every backend


def _check_id(value, what: str, url: str) -> None:
    """An id no row can have is simply not found (SQLite would overflow on it)."""
    if type(value) is not int or not 1 <= value <= MAX_ID:
        raise NotFound(f"no {what} {value!r} in {url}: ids are whole numbers from 1 to {MAX_ID}")


def _plans_query():
    """Plans with their best comparable measured step time, number of runs, comparable runs."""
    from sqlalchemy import case, func, select

    from db.models import PlanRow, RunRow

    comparable = RunRow.comparable.is_(True)
    return (
        select(
            PlanRow,
            func.min(case((comparable, RunRow.step_ms))),
            func.count(RunRow.id),
            func.coalesce(func.sum(case((comparable, 1), else_=0)), 0),
        )
        .outerjoin(RunRow, RunRow.plan_id == PlanRow.id)
        .group_by(PlanRow.id)
    )


def _resolution(value: str | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, tuple):
        return value
    from runtime.workload import parse_resolution

    return parse_resolution(value)
