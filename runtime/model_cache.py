"""Facts derived from a catalog model's architecture, kept on disk.

A model's inventory and its FLOPs/activation trace at a workload never change for a given
config and diffusers version, but deriving them imports diffusers and builds the model on
`meta` (seconds, most of a `planner tune`). They are cached as JSON under a key that hashes
everything they depend on: the kind of fact, the family, the config, the arguments (storage
dtype, workload), the diffusers version and this tool's version. A changed config or an
upgraded diffusers simply misses and is derived again.

Lookup: the user's cache directory first, then the seed shipped with the package
(`runtime/data/model_cache.json`, written by `python -m profiler.cache_seed` for every catalog
model at its defaults). Writes go only to the user's cache, atomically; a cache that cannot be
written or read is skipped (it only ever saves time).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

SEED = Path(__file__).parent / "data" / "model_cache.json"


def cached(kind: str, spec, args: dict[str, Any], derive: Callable[[], dict]) -> dict:
    """The JSON-able fact `kind` of catalog model `spec` for `args`, derived at most once."""
    key = cache_key(kind, spec, args)
    seed = _seed().get(key)
    if seed is not None:
        return seed
    path = _user_dir() / f"{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    value = derive()
    _write(path, value)
    return value


def cache_key(kind: str, spec, args: dict[str, Any]) -> str:
    from runtime.version import TOOL_VERSION

    fields = {
        "kind": kind, "family": spec.family, "config": dict(spec.config), "args": args,
        "diffusers": _diffusers_version(), "tool": TOOL_VERSION,
    }
    text = json.dumps(fields, sort_keys=True, default=list)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"


@functools.lru_cache(maxsize=1)
def _diffusers_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("diffusers")
    except metadata.PackageNotFoundError:
        return "none"


@functools.lru_cache(maxsize=1)
def _seed() -> dict:
    try:
        return json.loads(SEED.read_text())["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def seed_versions() -> dict:
    """The diffusers and tool versions the shipped seed was written with."""
    try:
        data = json.loads(SEED.read_text())
        return {"diffusers": data["diffusers"], "tool": data["tool"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _user_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("offload-planner")) / "models"


def _write(path: Path, value: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(value, f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass  # a read-only or full cache only costs time


def write_seed(entries: dict[str, dict]) -> None:
    from runtime.version import TOOL_VERSION

    data = {"diffusers": _diffusers_version(), "tool": TOOL_VERSION, "entries": entries}
    SEED.parent.mkdir(parents=True, exist_ok=True)
    SEED.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")
    _seed.cache_clear()
