"""A profile read back from the JSON `planner profile --json` prints.

That JSON is `dataclasses.asdict(profile)` plus a `summary` of derived figures; this is its
inverse, so a profile measured on one machine (a GPU box) can be replayed on another (CI, a
laptop) without the store it was saved in. Unknown keys are ignored, missing ones refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from profiler.types import Bandwidth, BandwidthPoint, BlockProfile, MachineFacts, Profile
from runtime.dtypes import DType
from runtime.errors import UserError
from runtime.workload import CfgMode, Workload


def load_profile_json(path: str | Path) -> Profile:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read a profile from {path}: {e}; give the output of `planner profile --json`") from e
    return profile_from_dict(data, str(path))


def profile_from_dict(data: dict, source: str = "profile") -> Profile:
    try:
        bw, w = data["bandwidth"], data["workload"]
        return Profile(
            machine=MachineFacts(**data["machine"]),
            device=data["device"],
            model_id=data["model_id"],
            workload=Workload(
                height=w["height"], width=w["width"], batch=w["batch"], cfg=CfgMode(w["cfg"]),
                text_tokens=w["text_tokens"],
            ),
            storage_dtype=DType(data["storage_dtype"]),
            compute_dtype=DType(data["compute_dtype"]),
            bandwidth=Bandwidth(
                pinned_gbps=float(bw["pinned_gbps"]),
                pageable_gbps=float(bw["pageable_gbps"]),
                pinned_under_compute_gbps=float(bw["pinned_under_compute_gbps"]),
                copy_overhead_us=float(bw["copy_overhead_us"]),
                by_size=tuple(BandwidthPoint(**p) for p in bw.get("by_size", ())),
                disk_read_gbps=_optional_float(bw.get("disk_read_gbps")),
                disk_read_under_copy_gbps=_optional_float(bw.get("disk_read_under_copy_gbps")),
            ),
            blocks=tuple(BlockProfile(**b) for b in data["blocks"]),
            non_block_ms=float(data["non_block_ms"]),
            non_block_bytes=int(data["non_block_bytes"]),
            workspace_bytes=int(data["workspace_bytes"]),
            is_estimate=bool(data["is_estimate"]),
            source=data["source"],
            tool_version=data["tool_version"],
            created=data["created"],
            id=data.get("id"),
            host_baseline_bytes=int(data["host_baseline_bytes"]) if data.get("host_baseline_bytes") is not None else None,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(
            f"{source} is not a profile as `planner profile --json` writes it ({type(e).__name__}: {e}): "
            f"give that command's output"
        ) from e


def _optional_float(value) -> float | None:
    return None if value is None else float(value)
