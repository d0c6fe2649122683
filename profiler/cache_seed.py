"""Write the model cache's seed (`runtime/data/model_cache.json`): `python -m profiler.cache_seed`.

Every catalog model's inventory and FLOPs/activation trace at its defaults, derived once here so
that a fresh install starts fast (`runtime.model_cache` reads the seed after the user's cache).
It lives above both `runtime.inventory` and `profiler.flops`, which read through the cache.
"""

from __future__ import annotations

from profiler.flops import derive_trace, trace_args
from runtime.catalog import all_models
from runtime.checkpoint.inspect import NON_BLOCK_KIND, derive_non_block_names
from runtime.dtypes import DType, compute_dtype
from runtime.families import get_family
from runtime.inventory import derive_inventory, inventory_args
from runtime.model_cache import cache_key, write_seed


# The README's examples that run a model off its default workload (WIDTHxHEIGHT, frames): seeded
# too, so that the documented commands start as fast as a default one.
EXAMPLE_WORKLOADS = {
    "wan2.2-t2v-a14b": ("832x480", 81),
    "hunyuanvideo": ("848x480", 61),
}


def main() -> None:
    """Write the seed: every catalog model's inventory (its storage, bf16, fp8), the names of
    its tensors outside the blocks (for `models inspect`) and its trace at its default workload
    (and at EXAMPLE_WORKLOADS) in its compute dtype."""
    entries = {}
    for spec in all_models().values():
        entries[cache_key(NON_BLOCK_KIND, spec, {})] = derive_non_block_names(get_family(spec.family), spec)
        for storage in {spec.storage_dtype, DType.BF16, DType.FP8}:
            entries[cache_key("inventory", spec, inventory_args(storage))] = \
                derive_inventory(spec.id, storage).to_dict()
        compute = compute_dtype(spec.storage_dtype)
        workloads = [spec.workload()]
        if spec.id in EXAMPLE_WORKLOADS:
            resolution, frames = EXAMPLE_WORKLOADS[spec.id]
            workloads.append(spec.workload(resolution, frames=frames))
        for workload in workloads:
            entries[cache_key("trace", spec, trace_args(workload, compute))] = \
                derive_trace(spec.id, workload, compute).to_dict()
        print(spec.id, flush=True)
    write_seed(entries)


if __name__ == "__main__":
    main()
