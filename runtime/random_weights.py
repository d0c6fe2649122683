"""Models with random weights of the right shapes and dtypes, for measuring without checkpoints.

Timing does not depend on weight values, so the profiler, `planner tune --verify` and the
benchmarks build models here instead of loading 24 GB of real weights.
"""

from __future__ import annotations

from runtime.dtypes import DType, compute_dtype, storage_dtype


def fill_random_(module) -> None:
    """Random weights in place: matrices N(0, 1/fan_in) so activations keep their scale (no
    denormals, which run far slower on CPUs), norm scales 1, biases N(0, 0.02)."""
    import torch

    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if not tensor.is_floating_point():
                continue
            if tensor.dim() >= 2:
                tensor.normal_(0.0, tensor.shape[-1] ** -0.5)
            elif name.endswith("weight"):
                tensor.fill_(1.0)
            else:
                tensor.normal_(0.0, 0.02)


def to_storage_(module, storage: DType) -> None:
    """Cast each parameter to the dtype `storage` keeps it in (fp8: matrices fp8, rest bf16)."""
    for param in module.parameters():
        param.data = param.data.to(storage_dtype(storage, tuple(param.shape)).torch())


def random_model(model_id: str, storage: DType | None = None, device: str = "cpu"):
    """The catalog model `model_id` on `device` with random weights stored as `storage`."""
    import torch

    from runtime.catalog import get_model
    from runtime.families import get_family

    spec = get_model(model_id)
    storage = storage or spec.storage_dtype
    model = get_family(spec.family).build(spec.config, device="meta")
    # nn.Module.to, not diffusers' override, which warns about fp32 modules FLUX does not have
    model = torch.nn.Module.to(model, compute_dtype(storage).torch()).to_empty(device=device)
    torch.manual_seed(0)
    fill_random_(model)
    to_storage_(model, storage)
    return model.eval()
