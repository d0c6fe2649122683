"""What the store accepts: plans that can run on the catalog model they name.

A plan is checked against `runtime.inventory.inventory(model, storage dtype)`, the model's own
architecture built on `meta`: the family, every block present once and in execution order with
the model's own name, kind and bytes (quantized storage: the checkpoint's bytes, checked when
applied), dtypes that agree, cast modes the dtype allows, and
predictions that are figures a plan can have (a peak within its budget, a step no faster than
its own lower bound). A plan for a model the catalog does not know is stored only when the
caller says so (`allow_unknown_model`), and `best` never returns it.
"""

from __future__ import annotations

import functools

from db.errors import StoreError
from runtime.errors import UserError

_FIX = "make the plan with `planner tune` for this model, or export it again from a store that has it"


class PlanRejected(StoreError):
    """A plan the store refuses: it could never be applied to the model it names."""


@functools.lru_cache(maxsize=32)
def _inventory(model_id: str, storage):
    from runtime.inventory import inventory

    return inventory(model_id, storage)


def _converted(inv, plan):
    from runtime.analysis.mixed import converted_inventory, plan_conversions

    return converted_inventory(inv, *plan_conversions(plan))


def is_catalog_model(model_id: str) -> bool:
    from runtime.catalog import find_model

    return find_model(model_id) is not None


def check_storable(plan, *, allow_unknown_model: bool = False, source: str = "the plan") -> bool:
    """Raise `PlanRejected` unless `plan` can run on its catalog model; True when it was checked
    against the catalog, False for an unknown model stored because `allow_unknown_model`.

    The plan is first read back through the plan file's own reader, the one every read of the
    store uses: a plan the store could not read back is never stored."""
    _readable(plan, source)
    return _check_catalog(plan, allow_unknown_model, source)


def _check_catalog(plan, allow_unknown_model: bool, source: str) -> bool:
    """`check_storable` less the read-back (a plan the store has just read)."""
    parts = _expert_parts(plan, source)
    if not is_catalog_model(plan.model.id):
        if allow_unknown_model:
            for part, where in parts:
                _check_self_consistent(part, where)
            return False
        raise PlanRejected(
            f"{source} is for model {plan.model.id!r}, which this tool's catalog does not know: "
            f"store it anyway with `planner plans import --allow-unknown-model` (it is then never "
            f"returned by `plans best`), or use a model from `planner models list`"
        )
    _check_experts(plan, source)
    _check_workload(plan, source)
    for part, where in parts:
        _check_self_consistent(part, where)
        _check_against_model(part, where)
    return True


def _readable(plan, source: str) -> None:
    from runtime.plan import dumps_plan, loads_plan

    try:
        loads_plan(dumps_plan(plan), source=source)
    except (UserError, ValueError) as e:
        raise PlanRejected(f"{e}; the store keeps only plans it can read back") from None


def _expert_parts(plan, source: str) -> list:
    """(one-transformer plan, how to name it) for the plan's first expert and each further one."""
    from runtime.plan import FIRST_EXPERT

    if not plan.experts:
        return [(plan, source)]
    attrs = [FIRST_EXPERT, *(e.attr for e in plan.experts)]
    return [(plan.for_expert(a), f"{source} (expert {a})") for a in attrs]


def _check_experts(plan, source: str) -> None:
    """Further experts' placements only for a model that runs them, under its attributes."""
    if not plan.experts:
        return
    from runtime.catalog import get_model

    experts = get_model(plan.model.id).experts
    known = experts.attrs[1:] if experts is not None else ()
    for e in plan.experts:
        if e.attr not in known:
            has = f"its further experts are {', '.join(known)}" if known else "it has one transformer"
            raise PlanRejected(
                f"{source} places an expert {e.attr!r} that {plan.model.id} does not run ({has}): {_FIX}"
            )


def _check_workload(plan, source: str) -> None:
    """The workload is one the model's pipeline runs as given (frames, guidance, sizes)."""
    from runtime.catalog import get_model

    try:
        get_model(plan.model.id).check_workload(plan.workload)
    except UserError as e:
        raise PlanRejected(f"{source}: {e}; {_FIX}") from None


def fits_catalog(plan) -> bool:
    """True where `plan`, read from the store, passes `check_storable` against the catalog
    (no exception)."""
    try:
        return _check_catalog(plan, False, "the plan")
    except UserError:
        return False


def _check_self_consistent(plan, source: str) -> None:
    from runtime.dtypes import compute_dtype
    from runtime.plan import CastMode

    m, p = plan.model, plan.predictions
    if m.compute_dtype is not compute_dtype(m.storage_dtype):
        raise PlanRejected(
            f"{source} computes in {m.compute_dtype.value} but stores {m.storage_dtype.value}, "
            f"which computes in {compute_dtype(m.storage_dtype).value}: {_FIX}"
        )
    if not m.storage_dtype.casts:  # only fp8 and quantized storage is cast on the device
        for b in plan.blocks:  # (or a block a mixed plan stores in its own format)
            if b.cast is CastMode.AUTO and b.format is None:
                raise PlanRejected(
                    f"{source}: block {b.name!r} casts 'auto', which only fp8 or quantized storage "
                    f"has, but the plan stores {m.storage_dtype.value}: {_FIX}"
                )
    _check_quant(plan, source)
    if p.peak_vram_bytes > plan.target.vram_budget_bytes:
        raise PlanRejected(
            f"{source} predicts a peak of {p.peak_vram_bytes} bytes, over its own budget of "
            f"{plan.target.vram_budget_bytes}: it does not fit its target; {_FIX}"
        )
    if p.step_ms + 1e-9 < p.lower_bound_ms * (1 - 1e-6):
        raise PlanRejected(
            f"{source} predicts {p.step_ms} ms/step, faster than its own lower bound of "
            f"{p.lower_bound_ms} ms: those figures cannot both hold; {_FIX}"
        )


def _check_quant(plan, source: str) -> None:
    """Each block's quant types agree with the storage: none for plain storage, NF4 only in an
    NF4 file, GGUF types only in a GGUF one; a block in its own format (a mixed plan), that
    format's."""
    storage = plan.model.storage_dtype
    for b in plan.blocks:
        if b.format is not None:  # a block in its own format holds that format's quant type
            own = (b.format.value,) if b.format.is_quantized else ()
            if b.quant != own:
                raise PlanRejected(
                    f"{source}: block {b.name!r} is stored as {b.format.value} but its quant "
                    f"types say {', '.join(b.quant) or 'none'}: {_FIX}"
                )
            continue
        if not b.quant:
            continue
        nf4 = {q == "nf4" for q in b.quant}
        if not storage.is_quantized or nf4 != {storage.value == "nf4"}:
            raise PlanRejected(
                f"{source}: block {b.name!r} is stored as {', '.join(b.quant)} but the plan stores "
                f"{storage.value}: {_FIX}"
            )


def _check_against_model(plan, source: str) -> None:
    try:
        inv = _inventory(plan.model.id, plan.model.storage_dtype)
        if any(b.format is not None or b.pruned for b in plan.blocks):
            inv = _converted(inv, plan)  # blocks in their own format, pruned: their bytes
    except UserError as e:
        raise PlanRejected(f"{source} cannot be checked against {plan.model.id}: {e}") from None
    check_blocks(plan, inv, source)


def check_blocks(plan, inv, source: str, model: str | None = None, fix: str = _FIX) -> None:
    """`plan` places every block of inventory `inv` once, in its order, with its name, kind
    and (unquantized) bytes; `model` names what `inv` is in messages (default the plan's model)."""
    model = model or plan.model.id
    if plan.model.family != inv.family:
        raise PlanRejected(
            f"{source} is for a {plan.model.family} model but {model} is a "
            f"{inv.family} model: {fix}"
        )
    if len(plan.blocks) != len(inv.blocks):
        raise PlanRejected(
            f"{source} has {len(plan.blocks)} blocks but {model} has {len(inv.blocks)}: "
            f"a plan places every block of the model once; {fix}"
        )
    for have, want in zip(inv.blocks, plan.blocks):
        if (have.name, have.kind) != (want.name, want.kind):
            raise PlanRejected(
                f"{source}: block {have.index} of {model} is {have.name!r} ({have.kind}) "
                f"but the plan has {want.name!r} ({want.kind}) there: {fix}"
            )
        # quantized storage: the bytes are the checkpoint's own layout (GGUF/NF4 blocks), which
        # the catalog cannot know; apply checks them against the loaded model
        if have.bytes != want.bytes and not plan.model.storage_dtype.is_quantized:
            raise PlanRejected(
                f"{source}: block {have.name!r} holds {have.bytes} bytes in "
                f"{plan.model.storage_dtype.value} in {model} but the plan says {want.bytes}: {fix}"
            )
