"""How much each block's storage format changes the denoiser's output.

For every block and format (fp8, Q8_0, Q4_K), that block alone is converted the way the engine
converts it (`runtime.analysis.convert.computed`: the engine's dequantization, then the cast to
the compute dtype), the denoiser runs on recorded calibration inputs (its real inputs during
real denoising runs, one per step), and the relative error `||y - y_ref|| / ||y_ref||` of its
output is averaged over those steps. The block's own tensors are put back after each format.

This measures the error of one block at a time; plans add the errors of their blocks, which
is a first-order estimate (errors of several blocks may add up otherwise). How much error an
image tolerates is a question of the weights: only a run on a real checkpoint answers it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from runtime.analysis.convert import FORMATS, computed
from runtime.dtypes import DType


@dataclasses.dataclass(frozen=True)
class BlockError:
    block: str
    kind: str
    format: DType
    rel_error: float  # mean over the calibration inputs


@dataclasses.dataclass(frozen=True)
class SensitivityTable:
    model_id: str
    inputs: int  # calibration forwards the errors average over
    rows: tuple[BlockError, ...]

    def error(self, block: str, fmt: DType) -> float:
        for row in self.rows:
            if row.block == block and row.format is fmt:
                return row.rel_error
        raise KeyError((block, fmt))

    def errors_by_block(self) -> dict[str, dict[DType, float]]:
        out: dict[str, dict[DType, float]] = {}
        for row in self.rows:
            out.setdefault(row.block, {})[row.format] = row.rel_error
        return out

    def to_dict(self) -> dict:
        return {"model": self.model_id, "inputs": self.inputs, "rows": [
            {"block": r.block, "kind": r.kind, "format": r.format.value, "rel_error": r.rel_error}
            for r in self.rows]}

    @classmethod
    def from_dict(cls, data: dict) -> "SensitivityTable":
        rows = tuple(BlockError(r["block"], r["kind"], DType(r["format"]), float(r["rel_error"]))
                     for r in data["rows"])
        return cls(data["model"], int(data["inputs"]), rows)


def block_sensitivity(
    model, blocks, calibration: Sequence[tuple[tuple, dict]], formats: Sequence[DType] = FORMATS,
    model_id: str = "",
) -> SensitivityTable:
    """The table for `blocks` (`(name, kind, block)` of `model`) over `calibration` inputs
    (`(args, kwargs)` of the model's forward)."""
    import torch

    rows = []
    with torch.no_grad():
        references = [_output(model(*args, **kwargs)) for args, kwargs in calibration]
        for name, kind, block in blocks:
            tensors = [t for t in list(block.parameters()) + list(block.buffers())
                       if t.is_floating_point()]
            originals = [t.data for t in tensors]
            try:
                for fmt in formats:
                    for tensor, original in zip(tensors, originals):
                        tensor.data = computed(original, fmt, original.dtype)
                    errors = [_relative(_output(model(*args, **kwargs)), ref)
                              for (args, kwargs), ref in zip(calibration, references)]
                    rows.append(BlockError(name, kind, fmt, sum(errors) / len(errors)))
            finally:
                for tensor, original in zip(tensors, originals):
                    tensor.data = original
    return SensitivityTable(model_id, len(calibration), tuple(rows))


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
