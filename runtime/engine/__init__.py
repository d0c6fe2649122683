"""The offload engine: executes a plan on a module and undoes it.

One idea per module: `host_memory` (how much host RAM we may pin, and pinning it in place),
`packing` (one flat host buffer per dtype group per streamed block, and views into it),
`staging` (resident weights to and from the device through pinned chunks), `casting` (fp8
weights cast just in time), `ring` (the ring of device slots driven by `runtime.schedule`),
`checks` (plan against model, before anything is touched), `offload` (the apply/remove worker)
and `handle` (what the caller holds). The public entry point is `runtime.apply.apply_plan`.
"""
