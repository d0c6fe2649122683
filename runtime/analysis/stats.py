"""Activation statistics, recorded by forward hooks while the model runs as usual.

Per block, two things:
- how often each MLP hidden unit is active: a unit counts as active on a token when its value
  after the activation function (the down projection's input; a gated MLP's gated product)
  has magnitude above `threshold` (default `ACTIVE_THRESHOLD` = 0.05). GELU and SiLU pass
  positive inputs almost unchanged and never go below -0.17 (GELU) / -0.28 (SiLU), so a unit
  under 0.05 in magnitude contributes next to nothing to the down projection; the magnitude
  (not the sign) counts because a gated product's sign carries no meaning.
- the residual update: for each output tensor of the block, the per-token L2 norm of
  `output - input` (the input of the same shape it updates; where several have that shape, the
  nearest), summed with the input's norms and the tokens, so mean and relative size follow.

Counts accumulate on the device (no synchronisation per forward) and are read once by
`collect()`. Hooks only read: the model's output is bitwise what it is without them.
The file (`save`) is safetensors, accumulated over runs: counts and sums add, `runs` counts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

from runtime.analysis.sites import MlpSite, mlp_sites
from runtime.errors import UserError

ACTIVE_THRESHOLD = 0.05
FORMAT = "offload-planner.activation-stats/1"


@dataclasses.dataclass(frozen=True)
class ActivationStats:
    """Counts and sums by key: `mlp/{block}/{site}/active` (int64, one per unit),
    `mlp/{block}/{site}/tokens` (int64 [1]), `residual/{block}` (float64: sum of update
    norms, sum of input norms, tokens)."""

    tensors: Mapping[str, object]
    threshold: float
    runs: int

    def active_fraction(self, block: str, site: str):
        """How often each hidden unit of the MLP read by `site` was active (0..1)."""
        tokens = int(self.tensors[f"mlp/{block}/{site}/tokens"][0])
        return self.tensors[f"mlp/{block}/{site}/active"].double() / max(tokens, 1)

    def least_active(self, block: str, site: str, count: int) -> tuple[int, ...]:
        """The `count` units of the MLP read by `site` that were active least often (ties to
        the lower index), sorted: what a plan's `pruned` takes."""
        import torch

        fraction = self.active_fraction(block, site)
        if not 0 <= count <= fraction.numel():
            raise UserError(f"{count} units cannot be chosen from the {fraction.numel()} of "
                            f"{block} {site}: give 0 to {fraction.numel()}")
        order = torch.argsort(fraction, stable=True)[:count]
        return tuple(sorted(int(i) for i in order))

    def residual_norm(self, block: str) -> tuple[float, float]:
        """(mean update norm per token, mean update norm / mean input norm) of `block`."""
        update, base, tokens = (float(v) for v in self.tensors[f"residual/{block}"])
        return update / max(tokens, 1.0), update / base if base else 0.0

    def merged(self, other: "ActivationStats") -> "ActivationStats":
        if other.threshold != self.threshold:
            raise UserError(
                f"activation statistics recorded at threshold {other.threshold} cannot be added "
                f"to ones recorded at {self.threshold}: record into a new file"
            )
        if set(other.tensors) != set(self.tensors):
            raise UserError("activation statistics of a different model cannot be added: "
                            "record into a new file")
        tensors = {k: v + other.tensors[k] for k, v in self.tensors.items()}
        return ActivationStats(tensors, self.threshold, self.runs + other.runs)

    def save(self, path: Path) -> "ActivationStats":
        """Add these statistics to the file at `path` (created if absent); the sum is returned."""
        from safetensors.torch import save_file

        from runtime.files import atomic_path

        path = Path(path)
        total = load_stats(path).merged(self) if path.exists() else self
        metadata = {"format": FORMAT, "threshold": repr(total.threshold), "runs": str(total.runs)}
        with atomic_path(path, "--record-stats", (".safetensors",), "stats.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in total.tensors.items()}, str(tmp), metadata)
        return total


def load_stats(path: Path) -> ActivationStats:
    """Statistics from a file `save` wrote (safetensors: nothing is unpickled)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise UserError(f"{path} is not a readable safetensors file ({e}): give a file "
                        f"`--record-stats` wrote, or a new name") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} holds no activation statistics (format {meta.get('format')!r}, "
                        f"expected {FORMAT!r}): give a file `--record-stats` wrote, or a new name")
    return ActivationStats(tensors, float(meta["threshold"]), int(meta["runs"]))


class StatsRecorder:
    """Hooks on every block (residual update) and every MLP down projection (active units);
    `remove()` takes them all off. One recorder is one run: `collect()` counts it as one."""

    def __init__(self, blocks, threshold: float) -> None:
        self.threshold = threshold
        self._sums: dict[str, object] = {}  # key -> device tensor, created on first use
        self._handles: list = []
        for name, _kind, block in blocks:
            self._handles.append(block.register_forward_hook(
                self._residual_hook(f"residual/{name}"), with_kwargs=True))
            for site in mlp_sites(block):
                linear = block.get_submodule(site.path)
                self._handles.append(linear.register_forward_pre_hook(
                    self._mlp_hook(f"mlp/{name}/{site.path}", site)))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def collect(self) -> ActivationStats:
        return ActivationStats({k: v.cpu() for k, v in self._sums.items()}, self.threshold, 1)

    def _add(self, key: str, value) -> None:
        if key in self._sums:
            self._sums[key] += value
        else:
            self._sums[key] = value.clone()

    def _mlp_hook(self, key: str, site: MlpSite):
        import torch

        def hook(_module, args):
            with torch.no_grad():
                hidden = args[0][..., site.start:site.stop]
                # 0/1 in the activation's dtype, summed in float32 (exact below 2**24 tokens a
                # forward): several times faster than counting a bool mask into int64
                active = hidden.abs().gt_(self.threshold).reshape(-1, site.units)
                counts = active.sum(dim=0, dtype=torch.float32).to(torch.int64)
                self._add(f"{key}/active", counts)
                tokens = torch.tensor([active.shape[0]], dtype=torch.int64, device=hidden.device)
                self._add(f"{key}/tokens", tokens)
        return hook

    def _residual_hook(self, key: str):
        import torch

        def hook(_module, args, kwargs, output):
            with torch.no_grad():
                sums = _residual_sums(list(args) + list(kwargs.values()), output)
                if sums is not None:
                    self._add(key, sums)
        return hook


def _residual_sums(inputs: list, output):
    """float64 [update norms, input norms, tokens] over the output tensors that update an
    input of their shape; None if none does (a block that changes the shape: a UNet's)."""
    import torch

    outputs = output if isinstance(output, (tuple, list)) else (output,)
    candidates = [t for t in inputs if _is_stream(t)]
    sums = None
    for out in (t for t in outputs if _is_stream(t)):
        same = [t for t in candidates if t.shape == out.shape]
        if not same:
            continue
        base = min(same, key=lambda t: float((out - t).float().norm())) if len(same) > 1 else same[0]
        candidates = [t for t in candidates if t is not base]
        update = torch.linalg.vector_norm(out - base, dim=-1)
        row = torch.stack([update.sum(dtype=torch.float64),
                           torch.linalg.vector_norm(base, dim=-1).sum(dtype=torch.float64),
                           torch.tensor(float(update.numel()), dtype=torch.float64,
                                        device=update.device)])
        sums = row if sums is None else sums + row
    return sums


def _is_stream(value) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() >= 2


def record_stats(module, blocks=None, threshold: float = ACTIVE_THRESHOLD) -> StatsRecorder:
    """Start recording activation statistics on `module` (its blocks as its family adapter
    finds them, or `blocks`: `(name, kind, block)` from any block finder)."""
    if not threshold >= 0:
        raise UserError(f"activation threshold {threshold} is not usable: give 0 or more")
    if blocks is None:
        from runtime.families import family_of_module

        blocks = family_of_module(module).blocks(module)
    return StatsRecorder(blocks, threshold)
