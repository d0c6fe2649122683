"""Where the nodes' plan store is: never a widget, so no URL (or its password) is saved into a
workflow or into the metadata of the images ComfyUI writes.

The store URL is `PLANNER_DB_URL` from the environment when set, else `db_url` of
`offload-planner.json` in ComfyUI's user directory (`ComfyUI/user/offload-planner.json`), else
the planner's default SQLite file in the user data directory, as for the `planner` command.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CONFIG_NAME = "offload-planner.json"
ENV_VAR = "PLANNER_DB_URL"


def config_path() -> Path:
    import folder_paths

    return Path(folder_paths.get_user_directory()) / CONFIG_NAME


def store_url() -> str | None:
    """The store URL the nodes use (None: the planner's default store)."""
    from runtime.errors import UserError

    if os.environ.get(ENV_VAR, "").strip():
        return None  # the store resolves the environment itself
    path = config_path()
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(
            f"{path} is not a readable JSON file ({e}): write it as {{\"db_url\": \"sqlite:////path/planner.db\"}} "
            f"or delete it"
        ) from None
    url = data.get("db_url") if isinstance(data, dict) else None
    if url is None:
        return None
    if not isinstance(url, str):
        raise UserError(f"db_url in {path} is not a string: write it as a database URL")
    return url.strip() or None
