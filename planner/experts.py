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
grows with the outgoing expert's device bytes and the incoming one's device and packed bytes.
That sum separates, so tune chooses both placements together among the searched candidates
that fit by choosing each on its own terms (`choose_experts`), and the plan file carries the
second expert's placement when it differs (`runtime.plan.ExpertPlan`).
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


def leaving_ms(model: CostModel, layout: Layout) -> float:
    """The switch's share that depends on the outgoing expert: its device bytes back to the host."""
    return _leaving_bytes(model, layout) / (model.profile.bandwidth.pageable_gbps * 1e6)


def arriving_ms(model: CostModel, layout: Layout) -> float:
    """The switch's share that depends on the incoming expert: its device bytes copied in and
    its streamed blocks packed into host buffers."""
    # its device bytes cross the same pageable path as an outgoing expert's, the other way
    return leaving_ms(model, layout) + _packed_bytes(model, layout) / (HOST_COPY_GBPS * 1e6)


def switch_of(model: CostModel, outgoing: Layout, incoming: Layout) -> Switch:
    """What the switch from `outgoing` to `incoming` copies, and how long it takes."""
    return Switch(
        _leaving_bytes(model, outgoing), _leaving_bytes(model, incoming),
        _packed_bytes(model, incoming), leaving_ms(model, outgoing) + arriving_ms(model, incoming),
    )


def predict_experts(
    model: CostModel, high: Layout, low: Layout, steps: tuple[int, int],
    budget_bytes: int | None = None, experts: tuple[str, str] = ("transformer", "transformer_2"),
) -> ExpertsPrediction:
    phases = (
        Phase(experts[0], steps[0], high, model.predict(high, budget_bytes)),
        Phase(experts[1], steps[1], low, model.predict(low, budget_bytes)),
    )
    return ExpertsPrediction(phases, switch_of(model, high, low))


def choose_experts(model: CostModel, candidates, steps: tuple[int, int], high=None) -> tuple[int, int]:
    """Indices into `candidates` (layouts that fit) of the high- and low-noise experts' layouts
    with the shortest generation: steps x step time of each phase plus the switch. The switch
    is the outgoing expert's bytes out plus the incoming one's in, so the sum separates and each
    expert's layout is the best on its own terms: the high-noise one's steps and what it
    returns, the low-noise one's steps and what it brings. `high`, an index, keeps the first
    expert's layout fixed (one measured on the GPU) and chooses only the second."""
    if not candidates:
        raise ValueError("no candidate layouts to choose from")
    costs = [(model.step_ms(c), c) for c in candidates]
    if high is None:
        high = min(range(len(costs)), key=lambda i: steps[0] * costs[i][0] + leaving_ms(model, costs[i][1]))
    low = min(range(len(costs)), key=lambda i: steps[1] * costs[i][0] + arriving_ms(model, costs[i][1]))
    return high, low


def _leaving_bytes(model: CostModel, layout: Layout) -> int:
    """Device bytes of an expert under `layout`: its resident blocks and non-block modules."""
    return sum(
        model.dev_total[c][i] for i, (s, c) in enumerate(zip(layout.streamed, layout.casts)) if not s
    ) + model.inventory.non_block_device_bytes


def _packed_bytes(model: CostModel, layout: Layout) -> int:
    return sum(
        model.dev_total[c][i] for i, (s, c) in enumerate(zip(layout.streamed, layout.casts)) if s
    )


def split_steps(experts, steps: int) -> tuple[int, int]:
    """(high-noise, low-noise) steps of a run of `steps` for a catalog model's `Experts`, on a
    flow-matching Euler schedule at the released sampling's shift (the pipeline's own
    scheduler decides at run time; the engine follows whatever it calls)."""
    timesteps = flow_match_timesteps(steps, experts.shift)
    boundary = experts.boundary_ratio * TRAIN_TIMESTEPS
    high = sum(1 for t in timesteps if t >= boundary)
    return high, steps - high


TRAIN_TIMESTEPS = 1000


def flow_match_timesteps(steps: int, shift: float) -> list[float]:
    """The timesteps diffusers' FlowMatchEulerDiscreteScheduler(shift=shift) runs for `steps`
    (static shifting, 1000 training steps), in float32 as it computes them, without importing
    diffusers. Its sigma range is that of its shifted training schedule, and `set_timesteps`
    shifts the spaced sigmas once more, as diffusers does; tests hold the two equal."""
    import numpy as np

    def shifted(sigma):
        return np.float32(shift) * sigma / (np.float32(1) + np.float32(shift - 1) * sigma)

    train = np.linspace(1, TRAIN_TIMESTEPS, TRAIN_TIMESTEPS, dtype=np.float32)[::-1] / TRAIN_TIMESTEPS
    train = shifted(train.astype(np.float32))
    sigma_max, sigma_min = float(train[0]), float(train[-1])
    spaced = np.linspace(sigma_max * TRAIN_TIMESTEPS, sigma_min * TRAIN_TIMESTEPS, steps) / TRAIN_TIMESTEPS
    sigmas = shifted(spaced).astype(np.float32)
    return [float(np.float32(s) * np.float32(TRAIN_TIMESTEPS)) for s in sigmas]


def plan_experts(model: CostModel, candidates, experts, steps: int, budget_bytes: int,
                 high=None) -> tuple[int, int, ExpertsPrediction]:
    """Both experts' placements for a run of `steps` chosen among `candidates` (layouts that
    fit; `high` fixes the first expert's index), with their prediction."""
    split = split_steps(experts, steps)
    h, low = choose_experts(model, candidates, split, high)
    pred = predict_experts(model, candidates[h], candidates[low], split, budget_bytes, attrs_of(experts))
    return h, low, pred


def attrs_of(experts) -> tuple[str, str]:
    return tuple(experts.attrs[:2])


def experts_to_dict(pred: ExpertsPrediction) -> dict:
    return {
        "phases": [
            {"expert": p.expert, "steps": p.steps, "step_ms": p.prediction.step_ms,
             "peak_vram_bytes": p.prediction.peak_vram_bytes,
             "streamed_blocks": sum(p.layout.streamed),
             "placement": "".join("s" if streamed else "r" for streamed in p.layout.streamed),
             "prefetch_depth": p.layout.depth}
            for p in pred.phases
        ],
        "same_placement": pred.phases[0].layout == pred.phases[1].layout,
        "switch": dataclasses.asdict(pred.switch),
        "peak_vram_bytes": pred.peak_vram_bytes,
        "total_ms": pred.total_ms,
    }
