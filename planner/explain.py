"""Where a plan's time goes: per-block compute, cast, copy and wait from the cost model, and a
picture of both streams over one steady step (matplotlib, imported only to draw)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from planner.costmodel import NON_BLOCK, CostModel, EventKind, Layout, Prediction, Stream
from planner.plan_host import plan_host_peak
from runtime.errors import PlanMismatchError, UserError
from runtime.plan import Placement, Plan, Tier


@dataclasses.dataclass(frozen=True)
class BlockRow:
    name: str
    kind: str
    placement: str
    compute_ms: float
    cast_ms: float
    copy_ms: float  # its copy's duration, on the copy stream (0 for resident blocks)
    wait_ms: float  # compute stream idle just before it: the bubble this block waits in
    read_ms: float = 0.0  # its disk-tier reads in one step (0 for blocks in RAM or resident)


@dataclasses.dataclass(frozen=True)
class Explanation:
    plan: Plan
    prediction: Prediction
    rows: tuple[BlockRow, ...]
    experts: object = None  # planner.experts.ExpertsPrediction for a two-expert model
    calibration: object = None  # planner.calibration.Calibration of a stored profile
    calibrated_step_ms: float | None = None  # step_ms under that calibration
    host: object = None  # planner.host_peak.HostPeak: the run's host memory by phase

    @property
    def wait_ms(self) -> float:
        return sum(r.wait_ms for r in self.rows)

    @property
    def ratio_to_floor(self) -> float | None:
        """Step time over the real floor at the plan's budget (the best any placement does)."""
        p = self.prediction
        return p.step_ms / p.lower_bound_ms if p.lower_bound_ms > 0 else None

    def to_dict(self) -> dict:
        p = self.prediction
        return {
            "step_ms": p.step_ms,
            "peak_vram_bytes": p.peak_vram_bytes,
            "device_weight_bytes": p.device_weight_bytes,
            "lower_bound_ms": p.lower_bound_ms,
            "ratio_to_floor": self.ratio_to_floor,
            "synchronized_step_ms": p.synchronized_step_ms,
            "wait_ms": self.wait_ms,
            "blocks": [dataclasses.asdict(r) for r in self.rows],
            "experts": _experts_dict(self.experts),
            "host_ram": self.host.to_dict() if self.host is not None else None,
            "host_ram_peak_bytes": self.host.peak_bytes if self.host is not None else None,
            "calibration": None if self.calibration is None
            else {**self.calibration.to_dict(), "step_ms": self.calibrated_step_ms},
            "timeline": [
                {"stream": e.stream.value, "start_ms": e.start_ms, "end_ms": e.end_ms, "block": e.block, "kind": e.kind.value}
                for e in p.timeline
            ],
        }


def layout_of(plan: Plan, inventory) -> Layout:
    """The cost model's view of a plan, checked block by block against the model."""
    names = [b.name for b in inventory.blocks]
    if [b.name for b in plan.blocks] != names:
        raise PlanMismatchError(
            f"the plan's blocks do not match {inventory.model_id} in execution order: tune the plan again"
        )
    return Layout(
        streamed=tuple(b.placement is Placement.STREAMED for b in plan.blocks),
        casts=tuple(b.cast for b in plan.blocks),
        depth=plan.prefetch_depth,
        host_memory=plan.host_memory,
        on_disk=tuple(b.tier is Tier.DISK for b in plan.blocks) if any(b.tier is Tier.DISK for b in plan.blocks) else (),
    )


def explain(plan: Plan, profile, inventory=None, calibration=None) -> Explanation:
    """Per-block times of `plan` under `profile` over one steady step (and its step time under
    the profile's `calibration`, planner.calibration, when given)."""
    from runtime.inventory import inventory as inventory_of

    inv = inventory or inventory_of(plan.model.id, plan.model.storage_dtype)
    _same_workload(plan, profile)
    model = CostModel(inv, profile)
    layout = layout_of(plan, inv)
    prediction = model.predict(layout, plan.target.vram_budget_bytes)
    waits = _waits(prediction)
    rows = []
    for i, b in enumerate(plan.blocks):
        cast = layout.casts[i]
        rows.append(
            BlockRow(
                name=b.name,
                kind=b.kind,
                placement=b.placement.value,
                compute_ms=model.compute[i] * model.forwards,
                cast_ms=(model.block_compute_ms(i, cast) - model.compute[i]) * model.forwards,
                copy_ms=model.copy_ms(i, cast, layout.host_memory) * model.forwards if layout.streamed[i] else 0.0,
                wait_ms=waits.get(b.name, 0.0),
                read_ms=model.read_ms(i, cast) * model.forwards if b.tier is Tier.DISK else 0.0,
            )
        )
    calibrated = calibration.step_ms(model, layout, prediction.step_ms) if calibration is not None else None
    return Explanation(plan, prediction, tuple(rows), _experts(plan, model, layout), calibration, calibrated,
                       plan_host_peak(plan, inv, profile))


def recompute(plan: Plan, profile, inventory=None) -> Plan:
    """`plan` with its predictions, and each further expert's, as the cost model gives them
    under `profile`: the figures a plan file claims are never the ones ranked."""
    from runtime.inventory import inventory as inventory_of
    from runtime.plan import Predictions

    inv = inventory or inventory_of(plan.model.id, plan.model.storage_dtype)
    _same_workload(plan, profile)
    model = CostModel(inv, profile)

    def predictions(part: Plan) -> Predictions:
        p = model.predict(layout_of(part, inv), plan.target.vram_budget_bytes)
        return Predictions(p.step_ms, p.peak_vram_bytes, p.lower_bound_ms)

    experts = tuple(dataclasses.replace(e, predictions=predictions(plan.for_expert(e.attr))) for e in plan.experts)
    return dataclasses.replace(plan, predictions=predictions(plan), experts=experts)


def _same_workload(plan: Plan, profile) -> None:
    if profile.workload != plan.workload:
        raise UserError(
            f"the profile is for {profile.workload.resolution} batch {profile.workload.batch}, the plan for "
            f"{plan.workload.resolution} batch {plan.workload.batch}: use a profile of the plan's workload"
        )


def _experts(plan: Plan, model: CostModel, layout: Layout):
    """Both phases and the switch when the plan's model runs two experts, each under its
    placement as the runtime applies it (the plan's `experts`, else the plan's own)."""
    from runtime.catalog import find_model

    spec = find_model(plan.model.id)
    if spec is None or spec.experts is None:
        return None
    from planner.experts import attrs_of, predict_experts, split_steps

    attrs = attrs_of(spec.experts)
    second = layout_of(plan.for_expert(attrs[1]), model.inventory)
    return predict_experts(model, layout, second, split_steps(spec.experts, spec.default_steps),
                           plan.target.vram_budget_bytes, attrs)


def _experts_dict(experts) -> dict | None:
    from planner.experts import experts_to_dict

    return experts_to_dict(experts) if experts is not None else None


def _waits(prediction: Prediction) -> dict[str, float]:
    """Idle time on the compute stream before each block's first event, summed over forwards."""
    out: dict[str, float] = {}
    last_end, last_block = 0.0, None
    for e in sorted((e for e in prediction.timeline if e.stream is Stream.COMPUTE), key=lambda e: e.start_ms):
        if e.block != last_block and e.block != NON_BLOCK:
            out[e.block] = out.get(e.block, 0.0) + max(0.0, e.start_ms - last_end)
        last_end, last_block = e.end_ms, e.block
    return out


_COLORS = {EventKind.COMPUTE: "#4c72b0", EventKind.CAST: "#dd8452", EventKind.COPY: "#55a868"}


def render_timeline(explanation: Explanation, path: str | Path, title: str = "") -> Path:
    """A PNG of both streams over one steady step; gaps on the compute row are the bubbles."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("--png needs matplotlib: install it with pip install -e '.[plot]' from this repository") from None
    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    lanes = {Stream.COMPUTE: 1, Stream.COPY: 0}
    fig, ax = plt.subplots(figsize=(14, 2.8), dpi=110)
    try:
        for e in explanation.prediction.timeline:
            color = "#8c8c8c" if e.block == NON_BLOCK else _COLORS[e.kind]
            ax.broken_barh([(e.start_ms, e.end_ms - e.start_ms)], (lanes[e.stream] - 0.4, 0.8),
                           facecolors=color, edgecolors="white", linewidth=0.3)
        step = explanation.prediction.step_ms
        ax.axvline(0, color="black", linewidth=0.8)
        ax.axvline(step, color="black", linewidth=0.8, linestyle="--")
        ax.set_yticks([0, 1], ["copy", "compute"])
        ax.set_xlabel("ms from the start of a steady step")
        ax.set_title(title or f"{explanation.plan.model.id}: {step / 1000:.3f} s/step, "
                     f"compute stream idle {explanation.wait_ms:.0f} ms")
        ax.legend(handles=[Patch(color=c, label=k.value) for k, c in _COLORS.items()]
                  + [Patch(color="#8c8c8c", label="non-block")], loc="upper right", fontsize=7, ncol=4)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
