"""The host memory of a plan file's run, phase by phase (`planner.host_peak`), as `explain`
and `plans show` print it: the plan's own tiers and casts, the pipeline's stated parts, and the
stated baseline of a machine's RAM (the OS and the process) unless a profile measured it."""

from __future__ import annotations

from planner.host_peak import HostParts, HostPeak, Streamed, host_peak, stated_baseline
from runtime.catalog import find_model
from runtime.inventory import device_bytes_by_dtype
from runtime.pipeline_parts import parts_bytes
from runtime.plan import FIRST_EXPERT, CastMode, Placement, Plan, Tier


def plan_parts(plan: Plan, inventory, profile=None) -> HostParts:
    """What `plan`'s run holds beside its packs."""
    measured = getattr(profile, "host_baseline_bytes", None) if profile is not None and not profile.is_estimate else None
    baseline, said = stated_baseline(measured)
    text, vae = parts_bytes(plan.model.id)
    spec = find_model(plan.model.id)
    parked = inventory.total_bytes if spec is not None and spec.experts is not None else 0
    device = plan.predictions.peak_vram_bytes if plan.target.gpu_name == "cpu" else 0
    return HostParts(baseline, text, vae, parked_expert_bytes=parked, device_bytes=device, baseline_source=said)


def streamed_of(plan: Plan, inventory) -> Streamed:
    """`plan`'s streamed blocks in stream order: host bytes in their cast, and their tiers."""
    info = {b.name: b for b in inventory.blocks}
    streamed = [b for b in plan.blocks if b.placement is Placement.STREAMED]
    return Streamed(
        tuple(sum(device_bytes_by_dtype(info[b.name], b.cast is CastMode.PRE).values()) for b in streamed),
        tuple(b.tier is Tier.DISK for b in streamed),
    )


def plan_host_peak(plan: Plan, inventory, profile=None) -> HostPeak:
    parts = plan_parts(plan, inventory, profile)
    second = None
    if parts.parked_expert_bytes:
        spec = find_model(plan.model.id)
        second = streamed_of(plan.for_expert(spec.experts.attrs[-1]), inventory)
    return host_peak(parts, streamed_of(plan.for_expert(FIRST_EXPERT), inventory), second)
