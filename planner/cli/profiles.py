"""`planner profiles list | show`: the stored profiles (`planner tune --profile ID` takes the ids)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from planner.cli._common import DbOption, JsonOption, print_json, print_table

app = typer.Typer(no_args_is_help=True)

MAX_ID = 2**63 - 1
ProfileId = Annotated[int, typer.Argument(help="Profile id from `planner profiles list`.", min=1, max=MAX_ID)]


@app.command("list")
def list_profiles(
    model: Annotated[Optional[str], typer.Option("--model", help="Only profiles of this model id.")] = None,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Stored profiles: where each was measured, for which model and workload."""
    from db.store import open_store

    with open_store(db) as store:
        found = [p for p in store.list_profiles() if model is None or p.model_id == model]
    rows = [_summary(p) for p in found]
    if json_out:
        print_json(rows)
        return
    print_table(None, _COLUMNS, [[r[k] for k in _KEYS] for r in rows])
    if not rows:
        typer.echo("no stored profiles: measure one with `planner profile --model MODEL`")


@app.command("show")
def show(profile_id: ProfileId, db: DbOption = None, json_out: JsonOption = False) -> None:
    """One stored profile with its bandwidths and every block's compute time."""
    import dataclasses

    from db.store import open_store

    with open_store(db) as store:
        p = store.get_profile(profile_id)
    if json_out:
        print_json({**dataclasses.asdict(p), "summary": _summary(p)})
        return
    print_table(f"profile {p.id}", _COLUMNS, [[_summary(p)[k] for k in _KEYS]])
    rows = [[b.index, b.name, b.kind, b.bytes, f"{b.compute_ms:.3f}", f"{b.cast_ms:.3f}"] for b in p.blocks]
    print_table(None, ["#", "block", "kind", "bytes", "compute ms", "cast ms"], rows)


_KEYS = ["id", "model", "gpu", "device", "workload", "dtype", "pinned_gbps", "source", "created"]
_COLUMNS = ["id", "model", "gpu", "device", "workload", "dtype", "pinned GB/s", "source", "created"]


def _summary(p) -> dict:
    from planner.cli.workload_text import workload_text

    return {
        "id": p.id,
        "model": p.model_id,
        "gpu": p.machine.gpu_name,
        "device": p.device,
        "workload": workload_text(p.workload),
        "dtype": p.storage_dtype.value,
        "pinned_gbps": round(p.bandwidth.pinned_gbps, 2),
        "source": "estimate" if p.is_estimate else "measured",
        "created": p.created[:19],
    }
