"""The table `planner analyze` measures (`runtime.analysis.sensitivity`) and the store keeps:
per block and option (a storage format, or pruning a fraction of the least active MLP units),
the denoiser's mean relative output error. Data only: no torch."""

from __future__ import annotations

import dataclasses

from runtime.dtypes import DType

Pruned = tuple[tuple[str, tuple[int, ...]], ...]


@dataclasses.dataclass(frozen=True)
class BlockOption:
    """What may be done to one block: store it in `format`, or remove the `prune` fraction of
    each of its MLPs' least active hidden units (from activation statistics)."""

    format: DType | None = None
    prune: float = 0.0

    @property
    def name(self) -> str:
        return self.format.value if self.format is not None else f"prune:{self.prune:g}"

    @classmethod
    def parse(cls, name: str) -> "BlockOption":
        if name.startswith("prune:"):
            return cls(prune=float(name.removeprefix("prune:")))
        return cls(format=DType(name))


@dataclasses.dataclass(frozen=True)
class BlockError:
    block: str
    kind: str
    option: BlockOption
    rel_error: float  # mean over the calibration inputs
    pruned: Pruned = ()  # a pruning option's units, by the path of the Linear that reads them


@dataclasses.dataclass(frozen=True)
class SensitivityTable:
    model_id: str
    inputs: int  # calibration forwards the errors average over
    rows: tuple[BlockError, ...]

    def row(self, block: str, option: BlockOption) -> BlockError:
        for row in self.rows:
            if row.block == block and row.option == option:
                return row
        raise KeyError((block, option))

    def error(self, block: str, option: BlockOption | DType) -> float:
        if isinstance(option, DType):
            option = BlockOption(format=option)
        return self.row(block, option).rel_error

    def errors_by_block(self) -> dict[str, dict[BlockOption, float]]:
        out: dict[str, dict[BlockOption, float]] = {}
        for row in self.rows:
            out.setdefault(row.block, {})[row.option] = row.rel_error
        return out

    def to_dict(self) -> dict:
        return {"model": self.model_id, "inputs": self.inputs, "rows": [
            {"block": r.block, "kind": r.kind, "option": r.option.name, "rel_error": r.rel_error,
             **({"pruned": {path: list(units) for path, units in r.pruned}} if r.pruned else {})}
            for r in self.rows]}
