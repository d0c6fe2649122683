"""Run a FLUX-shaped model of about 2 GB of random fp32 weights under a plan that streams every
block (two on the disk tier) and print, as JSON, the host RSS high-water of the run next to
`planner.host_peak`'s prediction. A process of its own (`python -m tests.rss_worker DIR`):
the high-water mark must not carry anything an earlier test left behind."""

from __future__ import annotations

import json
import os
import sys

import torch

from planner.host_peak import HostParts, host_peak
from planner.plan_host import streamed_of
from runtime import host_rss
from runtime.apply import apply_plan
from runtime.dtypes import DType
from runtime.families import get_family
from runtime.inventory import device_bytes_by_dtype, inventory_of_module
from runtime.plan import HostMemory, Target, build_plan
from runtime.random_weights import fill_random_
from runtime.schedule import ring_bytes, ring_of
from runtime.workload import Workload

CONFIG = dict(  # one double and five single blocks at width 2048: 1.9 GB in fp32
    patch_size=1, in_channels=64, num_layers=1, num_single_layers=5, attention_head_dim=128,
    num_attention_heads=16, joint_attention_dim=256, pooled_projection_dim=256,
    guidance_embeds=False, axes_dims_rope=(16, 56, 56),
)


def main(pack_dir: str) -> dict:
    os.environ["PLANNER_DISK_TIER_DIR"] = pack_dir
    torch.set_num_threads(1)
    adapter = get_family("flux")
    workload = Workload(64, 64, text_tokens=8)
    _warm_up(adapter, workload)  # torch's CPU kernels paged in, as in any process that ran one
    baseline = host_rss.rss_bytes()  # no weight yet
    torch.manual_seed(0)
    model = adapter.build(CONFIG).to_empty(device="cpu").eval()  # built on meta: no init temporaries
    fill_random_(model)  # drawn in place, tensor by tensor
    inv = inventory_of_module(model, adapter, "rss-flux", DType.FP32)
    names = [b.name for b in inv.blocks]
    plan = build_plan(inv, set(names), workload=workload, target=Target("cpu", 1 << 40), prefetch_depth=1,
                      host_memory=HostMemory.PAGEABLE, on_disk={names[2], names[4]})
    inputs = adapter.model_inputs(model, workload, "cpu", torch.float32)
    loaded = host_rss.rss_bytes()
    host_rss.reset_peak()  # the run starts with the model whole in memory
    handle = apply_plan(model, plan, "cpu")
    with torch.inference_mode():
        model(**inputs)
    measured = host_rss.peak_rss_bytes()
    stats = handle.stats
    handle.remove()

    streamed = [device_bytes_by_dtype(b, True) for b in inv.blocks]
    device = inv.non_block_bytes + ring_bytes(ring_of([True] * len(names), 1), streamed)
    parts = HostParts(baseline, 0, 0, device_bytes=device, in_memory_bytes=inv.total_bytes)
    predicted = host_peak(parts, streamed_of(plan, inv))
    return {"measured_bytes": measured, "predicted": predicted.to_dict(), "weight_bytes": inv.total_bytes,
            "baseline_bytes": baseline, "loaded_rss_bytes": loaded, "disk_bytes": stats.disk_bytes, "direct_io": stats.direct_io}


def _warm_up(adapter, workload) -> None:
    """One forward of the same architecture at a tiny width, then dropped."""
    small = adapter.build({**CONFIG, "num_attention_heads": 1, "num_single_layers": 1}).to_empty(device="cpu")
    fill_random_(small)
    with torch.inference_mode():
        small(**adapter.model_inputs(small, workload, "cpu", torch.float32))


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
