"""Models with random weights of the right shapes and dtypes, for measuring without checkpoints.

Timing does not depend on weight values, so the profiler, `planner tune --verify` and the
benchmarks build models here instead of loading 24 GB of real weights. Drawing 12 B random
numbers on the host takes minutes (about 6 for flux-dev on 16 cores); drawn on the GPU they take
seconds, so `random_model(..., fill_device="cuda")` draws each tensor there, casts it to its
storage dtype and moves it to `device` before drawing the next: the GPU holds one tensor at a
time, so a model far larger than the card is built the same way.
"""

from __future__ import annotations

from runtime.dtypes import DType, compute_dtype, storage_dtype


def _fill_one_(name: str, tensor) -> None:
    """Matrices N(0, 1/fan_in) so activations keep their scale (no denormals, which run far
    slower on CPUs), norm scales 1, biases N(0, 0.02); integer tensors are left as they are."""
    if not tensor.is_floating_point():
        return
    if tensor.dim() >= 2:
        tensor.normal_(0.0, tensor.shape[-1] ** -0.5)
    elif name.endswith("weight"):
        tensor.fill_(1.0)
    else:
        tensor.normal_(0.0, 0.02)


def fill_random_(module) -> None:
    """Random weights in place (see `_fill_one_`)."""
    import torch

    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            _fill_one_(name, tensor)


def to_storage_(module, storage: DType) -> None:
    """Cast each parameter to the dtype `storage` keeps it in (fp8: matrices fp8, rest bf16)."""
    for param in module.parameters():
        param.data = param.data.to(storage_dtype(storage, tuple(param.shape)).torch())


def random_model(
    model_id: str, storage: DType | None = None, device: str = "cpu", fill_device: str | None = None
):
    """The catalog model `model_id` on `device` with random weights stored as `storage`.
    With `fill_device`, the numbers are drawn there one tensor at a time (see the module doc)."""
    import torch

    from runtime.catalog import get_model
    from runtime.families import get_family

    spec = get_model(model_id)
    storage = storage or spec.storage_dtype
    model = get_family(spec.family).build(spec.config, device="meta")
    # nn.Module.to, not diffusers' override, which warns about fp32 modules FLUX does not have
    model = torch.nn.Module.to(model, compute_dtype(storage).torch())
    torch.manual_seed(0)
    if fill_device is not None:
        _fill_tensor_by_tensor(model, storage, torch.device(device), torch.device(fill_device))
        return model.eval()
    model = model.to_empty(device=device)
    fill_random_(model)
    to_storage_(model, storage)
    return model.eval()


def _fill_tensor_by_tensor(model, storage: DType, device, fill_device) -> None:
    """Every tensor still on `meta` drawn on `fill_device`, parameters cast to their storage
    dtype, then moved to `device` and put in place of the meta tensor (a meta tensor's data
    cannot be swapped, so the module gets a new Parameter or buffer; tied tensors stay tied).
    Tensors the build already made real (tables a family computes at construction) are moved."""
    import torch

    done: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for module_name, module in model.named_modules():
            for slots, is_param in ((module._parameters, True), (module._buffers, False)):
                for name, tensor in list(slots.items()):
                    if tensor is None:
                        continue
                    if id(tensor) not in done:
                        done[id(tensor)] = _drawn(f"{module_name}.{name}", tensor, is_param,
                                                  storage, device, fill_device)
                    slots[name] = done[id(tensor)]


def _drawn(name: str, tensor, is_param: bool, storage: DType, device, fill_device):
    import torch

    if tensor.is_meta:
        data = torch.zeros(tensor.shape, dtype=tensor.dtype, device=fill_device)
        _fill_one_(name, data)
        if is_param:
            data = data.to(storage_dtype(storage, tuple(tensor.shape)).torch())
    else:
        data = tensor.data
    data = data.to(device)
    return torch.nn.Parameter(data, requires_grad=tensor.requires_grad) if is_param else data
