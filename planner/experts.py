"""Two experts in one generation (Wan 2.2 A14B): a placement per expert and the cost of the
switch between them.

WanPipeline runs `transformer` while the timestep is at or above `boundary_ratio x
num_train_timesteps` and `transformer_2` after it: two phases of whole steps, one switch. Each
phase is one expert under its own layout, simulated by the ordinary cost model. The switch is
what `runtime.engine.experts` does at the first low-noise forward, in this order so the budget
holds at the switch:

1. the outgoing expert's plan is removed: its resident blocks and non-block modules go back to
   host memory (a device-to-host copy; the streamed blocks were there already);
2. the incoming expert's plan is applied: its resident blocks and non-block modules are copied
   to the device from pageable host memory, its streamed blocks packed into host buffers.

Between steps no activations are alive, so the peak at the switch is below either phase's
peak; the generation's peak is the larger phase peak. The two experts share an architecture,
so one inventory and one profile price both.

Because the experts share a profile, the phases are independent except for the switch, which
grows with the incoming expert's resident bytes: the low-noise placement is chosen among the
searched candidates by (low-noise steps x step time + switch time), the high-noise one is the
search's best.
"""

from __future__ import annotations

import dataclasses

from planner.costmodel import CostModel, Layout, Prediction

# A host memcpy (packing streamed blocks) runs near memory bandwidth; 10 GB/s is a typical
# single-threaded copy on a desktop (the pinned allocation itself is slower and is counted
# at the pageable rate below, a conservative stand-in until it is measured).
HOST_COPY_GBPS = 10.0


@dataclasses.dataclass(frozen=True)
class Phase:
    expert: str  # pipeline attribute: "transformer" or "transformer_2"
    steps: int
    layout: Layout
    prediction: Prediction


@dataclasses.dataclass(frozen=True)
class Switch:
    out_bytes: int  # device bytes the outgoing expert returns to the host
    in_bytes: int  # device bytes the incoming expert brings (resident blocks, non-block modules)
    packed_bytes: int  # host bytes of the incoming expert's streamed blocks, packed at the switch
    ms: float


@dataclasses.dataclass(frozen=True)
class ExpertsPrediction:
    phases: tuple[Phase, Phase]
    switch: Switch

    @property
    def peak_vram_bytes(self) -> int:
        return max(p.prediction.peak_vram_bytes for p in self.phases)

    @property
    def total_ms(self) -> float:
        """Denoising time of the whole generation: every step of both phases and the switch."""
        return sum(p.steps * p.prediction.step_ms for p in self.phases) + self.switch.ms


def phase_steps(scheduler, steps: int, boundary_ratio: float) -> tuple[int, int]:
    """(high-noise steps, low-noise steps) of a run of `steps` with `scheduler` (a diffusers
    scheduler), by WanPipeline's own rule: `t >= boundary_ratio x num_train_timesteps` runs
    the first expert."""
    if not 0.0 <= boundary_ratio <= 1.0:
        raise ValueError(f"boundary_ratio {boundary_ratio} is not a fraction")
    scheduler.set_timesteps(steps, device="cpu")
    boundary = boundary_ratio * scheduler.config.num_train_timesteps
    high = sum(1 for t in scheduler.timesteps if float(t) >= boundary)
    return high, len(scheduler.timesteps) - high


def switch_of(model: CostModel, outgoing: Layout, incoming: Layout) -> Switch:
    """What the switch from `outgoing` to `incoming` copies, and how long it takes."""
    bw = model.profile.bandwidth
    out_bytes = _resident_bytes(model, outgoing) + model.inventory.non_block_device_bytes
    in_bytes = _resident_bytes(model, incoming) + model.inventory.non_block_device_bytes
    packed = sum(
        model.dev_total[c][i] for i, (s, c) in enumerate(zip(incoming.streamed, incoming.casts)) if s
    )
    ms = (out_bytes + in_bytes) / (bw.pageable_gbps * 1e6) + packed / (HOST_COPY_GBPS * 1e6)
    return Switch(out_bytes, in_bytes, packed, ms)


def predict_experts(
    model: CostModel, high: Layout, low: Layout, steps: tuple[int, int],
    budget_bytes: int | None = None, experts: tuple[str, str] = ("transformer", "transformer_2"),
) -> ExpertsPrediction:
    phases = (
        Phase(experts[0], steps[0], high, model.predict(high, budget_bytes)),
        Phase(experts[1], steps[1], low, model.predict(low, budget_bytes)),
    )
    return ExpertsPrediction(phases, switch_of(model, high, low))


def choose_low_noise(model: CostModel, high: Layout, candidates, low_steps: int, budget: int):
    """The layout among `candidates` (layouts) that fits `budget` and minimises the low-noise
    phase plus the switch into it; `high` is the first phase's layout."""
    fitting = [c for c in candidates if model.peak_bytes(c) <= budget]
    if not fitting:
        raise ValueError("no candidate fits the budget")
    return min(fitting, key=lambda c: low_steps * model.step_ms(c) + switch_of(model, high, c).ms)


def _resident_bytes(model: CostModel, layout: Layout) -> int:
    return sum(
        model.dev_total[c][i] for i, (s, c) in enumerate(zip(layout.streamed, layout.casts)) if not s
    )


def split_steps(experts, steps: int) -> tuple[int, int]:
    """(high-noise, low-noise) steps of a run of `steps` for a catalog model's `Experts`, on a
    flow-matching Euler schedule at the released sampling's shift (the pipeline's own
    scheduler decides at run time; the engine follows whatever it calls)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return phase_steps(FlowMatchEulerDiscreteScheduler(shift=experts.shift), steps, experts.boundary_ratio)


def plan_experts(model: CostModel, high: Layout, candidates, experts, steps: int,
                 budget_bytes: int) -> ExpertsPrediction:
    """Both experts' placements for a run of `steps`: the high-noise expert keeps `high` (the
    search's best), the low-noise one the best of `candidates` counting the switch into it."""
    split = split_steps(experts, steps)
    low = choose_low_noise(model, high, [high, *candidates], split[1], budget_bytes)
    return predict_experts(model, high, low, split, budget_bytes, experts.attrs[:2])


def experts_to_dict(pred: ExpertsPrediction) -> dict:
    return {
        "phases": [
            {"expert": p.expert, "steps": p.steps, "step_ms": p.prediction.step_ms,
             "peak_vram_bytes": p.prediction.peak_vram_bytes,
             "streamed_blocks": sum(p.layout.streamed)}
            for p in pred.phases
        ],
        "switch": dataclasses.asdict(pred.switch),
        "peak_vram_bytes": pred.peak_vram_bytes,
        "total_ms": pred.total_ms,
    }
