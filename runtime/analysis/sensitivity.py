"""How much each block's storage format, or pruning, changes the denoiser's output.

For every block and option, that block alone is changed (stored in a format, fp8, Q8_0 or
Q4_K, converted the way the engine converts it: `runtime.analysis.convert.computed`, the
engine's dequantization, then the cast to the compute dtype; or, given activation statistics,
a fraction of each of its MLPs' least active hidden units removed: `runtime.analysis.pruning`),
the denoiser runs on recorded calibration inputs (its real inputs during real denoising runs,
one per step), and the relative error `||y - y_ref|| / ||y_ref||` of its output is averaged
over those steps. The block's own tensors are put back after each option.

This measures the error of one block at a time; plans add the errors of their blocks, which
is a first-order estimate (errors of several blocks may add up otherwise). How much error an
image tolerates is a question of the weights: only a run on a real checkpoint answers it.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

from runtime.analysis.convert import FORMATS, computed
from runtime.analysis.pruning import prune_units
from runtime.analysis.sites import mlp_sites
from runtime.analysis.table import BlockError, BlockOption, Pruned, SensitivityTable
from runtime.dtypes import DType
from runtime.engine.conversion import BlockConversions, remember


def block_sensitivity(
    model, blocks, calibration: Sequence[tuple[tuple, dict]], formats: Sequence[DType] = FORMATS,
    model_id: str = "", stats=None, prune: Sequence[float] = (),
) -> SensitivityTable:
    """The table for `blocks` (`(name, kind, block)` of `model`) over `calibration` inputs
    (`(args, kwargs)` of the model's forward): each format, and with activation statistics
    `stats` each fraction in `prune` of every MLP's least active units removed."""
    import torch

    rows = []
    with torch.no_grad():
        references = [_output(model(*args, **kwargs)) for args, kwargs in calibration]

        def error() -> float:
            errors = [_relative(_output(model(*args, **kwargs)), ref)
                      for (args, kwargs), ref in zip(calibration, references)]
            return sum(errors) / len(errors)

        for name, kind, block in blocks:
            for fmt in formats:
                with _converted(block, fmt):
                    rows.append(BlockError(name, kind, BlockOption(format=fmt), error()))
            for fraction in prune:
                units = _least_active(stats, name, block, fraction)
                if units:
                    with _pruned(block, units):
                        rows.append(BlockError(name, kind, BlockOption(prune=fraction), error(),
                                               units))
    return SensitivityTable(model_id, len(calibration), tuple(rows))


@contextlib.contextmanager
def _converted(block, fmt: DType):
    tensors = [t for t in list(block.parameters()) + list(block.buffers()) if t.is_floating_point()]
    originals = [t.data for t in tensors]
    try:
        for tensor, original in zip(tensors, originals):
            tensor.data = computed(original, fmt, original.dtype)
        yield
    finally:
        for tensor, original in zip(tensors, originals):
            tensor.data = original


@contextlib.contextmanager
def _pruned(block, units: Pruned):
    done = BlockConversions()
    remember(done, block)
    try:
        for path, chosen in units:
            prune_units(block, path, chosen)
        yield
    finally:
        done.undo()


def _least_active(stats, name: str, block, fraction: float) -> Pruned:
    """The `fraction` least active units of each MLP of `block` (none where unrecorded)."""
    out = []
    for site in mlp_sites(block):
        if f"mlp/{name}/{site.path}/active" in stats.tensors:
            count = int(round(fraction * site.units))
            if 0 < count < site.units:
                out.append((site.path, stats.least_active(name, site.path, count)))
    return tuple(sorted(out))


def _output(out):
    if isinstance(out, (tuple, list)):
        return out[0]
    return getattr(out, "sample", out)


def _relative(y, ref) -> float:
    ref = ref.double()
    return float((y.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def record_calibration(pipe, adapter, prompts: Sequence[str], workload, steps: int,
                       guidance: float, seed: int, device) -> list[tuple[tuple, dict]]:
    """The denoiser's inputs at every step of denoising each prompt (text encoders on the CPU
    while the prompts are encoded; the denoiser and VAE wherever `pipe` has them)."""
    import torch

    denoiser = getattr(pipe, adapter.denoiser)
    encoded = []
    with torch.no_grad():
        for prompt in prompts:
            kwargs = adapter.prompt_kwargs(pipe, prompt, workload, guidance, torch.device("cpu"))
            encoded.append({k: torch.utils._pytree.tree_map_only(
                torch.Tensor, lambda t: t.to(device), v) for k, v in kwargs.items()})
    captured: list[tuple[tuple, dict]] = []

    def capture(_module, args, kwargs):
        clone = lambda t: t.detach().clone()  # noqa: E731
        captured.append(torch.utils._pytree.tree_map_only(torch.Tensor, clone, (args, kwargs)))

    hook = denoiser.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        for index, kwargs in enumerate(encoded):
            generator = torch.Generator("cpu").manual_seed(seed + index)
            pipe(**kwargs, num_inference_steps=steps, height=workload.height, width=workload.width,
                 generator=generator, output_type="latent", return_dict=False)
    finally:
        hook.remove()
    return captured
