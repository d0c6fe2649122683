"""`planner models list | show | inspect`."""

from __future__ import annotations

from typing import Annotated

import typer

from planner.cli._common import JsonOption, echo, print_json, print_table

app = typer.Typer(no_args_is_help=True)


@app.command("list")
def list_models(json_out: JsonOption = False) -> None:
    """The models offload-planner knows by name, with family, parameters and bf16 size."""
    from planner.budget import format_size
    from runtime.catalog import all_models
    from runtime.dtypes import DType
    from runtime.inventory import inventory

    rows = []
    for s in all_models().values():
        inv = inventory(s.id, DType.BF16)
        n = _experts(s)
        rows.append({
            "id": s.id, "family": s.family, "dtype": s.storage_dtype.value,
            "params": inv.total_params * n, "bf16_bytes": inv.total_bytes * n, "experts": n,
            "description": s.description,
        })
    if json_out:
        print_json(rows)
        return
    print_table(
        None, ["model", "family", "dtype", "params", "bf16 size", "description"],
        [[r["id"], r["family"], r["dtype"], _params(r["params"]),
          format_size(r["bf16_bytes"]), r["description"]] for r in rows],
    )


@app.command("show")
def show(
    model: Annotated[str, typer.Argument(help="Model id from `planner models list`.")],
    dtype: Annotated[str, typer.Option(help="Storage dtype: bf16, fp16, fp8, fp32.")] = "",
    breakdown: Annotated[bool, typer.Option(
        "--breakdown", help="Each block kind's parameters by role: attention q/k/v/out, MLP, "
        "modulation, norms, other.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Every block of MODEL with its kind, parameters and bytes; non-block modules; totals."""
    from planner.budget import format_size
    from runtime.catalog import get_model
    from runtime.dtypes import DType
    from runtime.inventory import inventory

    from planner.cli._common import status

    if breakdown:
        _show_breakdown(model, DType.parse(dtype) if dtype else None, json_out)
        return
    with status(f"building {model} on the meta device (no weights)", enabled=not json_out):
        inv = inventory(model, DType.parse(dtype) if dtype else None)
    spec = get_model(model)
    n = _experts(spec)
    if json_out:
        print_json({**inv.to_dict(), "experts": n, "all_experts_params": inv.total_params * n,
                    "all_experts_bytes": inv.total_bytes * n})
        return
    rows = [[b.index, b.name, b.kind, b.params, b.bytes, format_size(b.bytes)] for b in inv.blocks]
    rows.append(["", "(non-block modules)", "", inv.non_block_params, inv.non_block_bytes, format_size(inv.non_block_bytes)])
    if n == 1:
        rows.append(["", "total", "", inv.total_params, inv.total_bytes, format_size(inv.total_bytes)])
    else:  # the pipeline holds every expert: the model's total is all of them
        rows.append(["", "one expert", "", inv.total_params, inv.total_bytes, format_size(inv.total_bytes)])
        rows.append(["", f"total ({n} experts: {', '.join(spec.experts.attrs)})", "",
                     inv.total_params * n, inv.total_bytes * n, format_size(inv.total_bytes * n)])
    each = f", each of {n} experts" if n > 1 else ""
    print_table(
        f"{inv.model_id} ({inv.family}, {inv.storage_dtype.value}{each})",
        ["#", "block", "kind", "params", "bytes", "size"],
        rows,
    )


@app.command("inspect")
def inspect_command(
    path: Annotated[
        str,
        typer.Argument(help="A .safetensors or .gguf file, a diffusers model folder or a pipeline folder."),
    ],
    json_out: JsonOption = False,
) -> None:
    """Blocks of a local checkpoint with dtypes, tensors and bytes, read from headers only."""
    from planner.budget import format_size
    from runtime.checkpoint.inspect import inspect_checkpoint
    from runtime.folder_blocks import discovered_reports, without_adapter

    if without_adapter(path):  # a pipeline folder of a class no family adapter knows
        _print_discovered(discovered_reports(path), json_out)
        return
    report = inspect_checkpoint(path)
    if json_out:
        print_json(report.to_dict())
        return
    def dtypes(by_dtype) -> str:  # quantized files: the bytes of each quant type too
        if report.format.value == "safetensors":
            return ", ".join(sorted(by_dtype))
        return ", ".join(f"{d} {format_size(n)}" for d, n in sorted(by_dtype.items()))

    rows = [
        [b.index, b.name, b.kind, dtypes(b.bytes_by_dtype), b.tensors, b.bytes,
         format_size(b.bytes)]
        for b in report.blocks
    ]
    rest = report.non_block_bytes
    rest_dtypes = dtypes(report.non_block_bytes_by_dtype)
    rows.append(
        ["", "(non-block)", "", rest_dtypes, report.non_block_tensors, rest, format_size(rest)]
    )
    total = report.total_bytes
    rows.append(["", "total", "", "", report.total_tensors, total, format_size(total)])
    kind = "" if report.format.value == "safetensors" else f"{report.format.value}, "
    echo(f"{report.path}: {report.family}, {kind}{report.naming.value} naming, "
         f"{len(report.files)} file{'s' if len(report.files) > 1 else ''}")
    print_table(None, ["#", "block", "kind", "dtype", "tensors", "bytes", "size"], rows)
    if report.unknown_tensors:
        first = report.unknown_tensors[0]
        echo(f"warning: {len(report.unknown_tensors)} tensor(s) belong to no {report.family} model this tool "
             f"knows (first: {first!r}): the file is for another model or damaged, and `planner apply` "
             f"refuses it", err=True)


def _show_breakdown(model: str, dtype, json_out: bool) -> None:
    from planner.budget import format_size
    from runtime.analysis.breakdown import by_kind, model_breakdown
    from runtime.catalog import get_model

    from planner.cli._common import status

    storage = dtype or get_model(model).storage_dtype
    with status(f"building {model} on the meta device (no weights)", enabled=not json_out):
        blocks = model_breakdown(model, storage)
    kinds = by_kind(blocks)
    if json_out:
        print_json({"model": model, "dtype": storage.value,
                    "kinds": [k.to_dict() for k in kinds], "blocks": [b.to_dict() for b in blocks]})
        return
    rows = []
    for kind in kinds:
        for role, share in kind.roles.items():
            rows.append([f"{kind.kind} x{kind.blocks}", role.value, _params(share.params),
                         f"{share.params / kind.params:.1%}", format_size(share.bytes)])
        rows.append([f"{kind.kind} x{kind.blocks}", "total", _params(kind.params), "100.0%",
                     format_size(kind.bytes)])
    print_table(f"{model} by role ({storage.value})", ["blocks", "role", "params", "share", "size"],
                rows)
    groups = []
    for kind in kinds:
        groups.append([f"{kind.kind} x{kind.blocks}", *(
            _params(kind.group(g).params) for g in _groups())])
    print_table(None, ["blocks", *(g.value for g in _groups())], groups)


def _groups():
    from runtime.analysis.roles import Group

    return list(Group)
@app.command("tiny-pipeline")
def tiny_pipeline(
    folder: Annotated[str, typer.Argument(help="A new folder to save it in, e.g. ./tiny-flux.")],
    json_out: JsonOption = False,
) -> None:
    """Save a tiny FluxPipeline (the catalog's tiny-flux, random weights, 2 MB) to try
    `planner apply` on a CPU: nothing is downloaded."""
    from pathlib import Path

    from runtime.errors import UserError
    from runtime.tiny_pipeline import save_tiny_pipeline

    path = Path(folder)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{folder} already exists and is not an empty folder: give a new folder name, e.g. ./tiny-flux")
    if not path.parent.is_dir():
        raise UserError(f"{folder}: the directory {path.parent} does not exist; create it or choose another path")
    save_tiny_pipeline(path)
    if json_out:
        print_json({"path": str(path), "model": "tiny-flux"})
        return
    echo(f"saved a tiny FluxPipeline for tiny-flux in {folder}; try: planner tune --model tiny-flux "
         f"--vram 1GB --gpu rtx-4060 -o tiny.json && planner apply tiny.json --weights {folder} "
         f"--prompt \"a cat\" --steps 2 -o cat.png")


def _experts(spec) -> int:
    """How many transformers of this architecture the model's pipeline holds."""
    return len(spec.experts.attrs) if spec.experts is not None else 1


def _print_discovered(reports, json_out: bool) -> None:
    """Each component's blocks as generic discovery finds them (declaration order)."""
    from planner.budget import format_size

    if json_out:
        print_json([{"component": r.component, "class": r.model_class, "role": r.role}
                    | r.report.to_dict() for r in reports])
        return
    for r in reports:
        rep = r.report
        echo(f"{r.component}: {r.model_class} ({r.role}), no family adapter: "
             f"{len(rep.blocks)} blocks found by discovery (declaration order; the first "
             f"forward records the order they run in)" if rep.blocks else
             f"{r.component}: {r.model_class} ({r.role}): no repeated blocks, runs whole")
        rows = [[b.index, b.name, b.kind, b.tensors, b.bytes, format_size(b.bytes)] for b in rep.blocks]
        rows.append(["", "(non-block)", "", rep.non_block_tensors, rep.non_block_bytes,
                     format_size(rep.non_block_bytes)])
        rows.append(["", "total", "", rep.total_tensors, rep.total_bytes, format_size(rep.total_bytes)])
        print_table(None, ["#", "block", "kind", "tensors", "bytes", "size"], rows)


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"
