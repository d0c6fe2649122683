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
        rows.append({
            "id": s.id, "family": s.family, "dtype": s.storage_dtype.value,
            "params": inv.total_params, "bf16_bytes": inv.total_bytes,
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
    from runtime.dtypes import DType
    from runtime.inventory import inventory

    from planner.cli._common import status

    if breakdown:
        _show_breakdown(model, DType.parse(dtype) if dtype else None, json_out)
        return
    with status(f"building {model} on the meta device (no weights)", enabled=not json_out):
        inv = inventory(model, DType.parse(dtype) if dtype else None)
    if json_out:
        print_json(inv.to_dict())
        return
    rows = [[b.index, b.name, b.kind, b.params, b.bytes, format_size(b.bytes)] for b in inv.blocks]
    rows.append(["", "(non-block modules)", "", inv.non_block_params, inv.non_block_bytes, format_size(inv.non_block_bytes)])
    rows.append(["", "total", "", inv.total_params, inv.total_bytes, format_size(inv.total_bytes)])
    print_table(
        f"{inv.model_id} ({inv.family}, {inv.storage_dtype.value})",
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


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"
