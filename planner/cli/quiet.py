"""Third-party chatter off the user's terminal while a command runs.

Libraries we drive (bitsandbytes' kernel-hub notices, transformers' torchvision fallbacks,
diffusers' deprecations, tqdm bars) write to stderr on their own. During a `planner` command
their log records and warnings go to our log, `offload_planner`, at debug level: silent unless
`PLANNER_LOG=FILE` names a file to keep them in. Our own warnings (a pinned-memory fallback,
raised from this package's files) still reach the terminal, one line each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Iterator

LOG = logging.getLogger("offload_planner")
OURS = tuple(str(Path(__file__).resolve().parents[2] / name) for name in ("planner", "runtime", "db", "profiler"))
# For libraries first imported during the command: their own stderr handlers start at errors
# only, and no progress bars.
_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"}


class _ToDebug(logging.Handler):
    """Every record reaching the root logger, re-logged on ours at debug level."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == LOG.name or record.name.startswith(LOG.name + "."):
            return
        try:
            LOG.debug("%s %s: %s", record.levelname, record.name, record.getMessage())
        except Exception:  # a record whose arguments do not format: drop it, never fail a command
            pass


@contextlib.contextmanager
def third_party_to_debug() -> Iterator[None]:
    root = logging.getLogger()
    handler = _ToDebug()
    root.addHandler(handler)
    ours = _our_handler()
    shown = warnings.showwarning
    warnings.showwarning = _show
    saved = {k: os.environ.get(k) for k in _ENV}
    for key, value in _ENV.items():
        os.environ.setdefault(key, value)
    if "diffusers" in sys.modules or "transformers" in sys.modules:
        from runtime.generate import quiet_hf_libraries

        quiet_hf_libraries()
    try:
        yield
    finally:
        warnings.showwarning = shown
        root.removeHandler(handler)
        if ours is not None:
            LOG.removeHandler(ours)
            ours.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _our_handler() -> logging.Handler | None:
    """A file handler where PLANNER_LOG names a file; our records never reach the root."""
    LOG.propagate = False
    LOG.setLevel(logging.DEBUG)
    path = os.environ.get("PLANNER_LOG", "").strip()
    if not path:
        return None
    try:
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    LOG.addHandler(handler)
    return handler


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    if str(filename).startswith(OURS):
        from planner.cli._common import inert

        print(f"warning: {inert(message)}", file=sys.stderr)
        return
    LOG.debug("%s %s:%s: %s", category.__name__, filename, lineno, message)
