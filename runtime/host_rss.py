"""This process's resident host memory: now, and the high-water mark since the last reset.

Linux keeps the high-water mark of the resident set as `VmHWM` in /proc/self/status; writing
5 to /proc/self/clear_refs resets it to the current RSS, which is how a run measures the peak
of each of its phases. Elsewhere, `resource.getrusage` gives the lifetime peak only.
"""

from __future__ import annotations

from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> int | None:
    """Resident set size now."""
    return _status_kib("VmRSS")


def peak_rss_bytes() -> int | None:
    """Resident set high-water mark since the process started or `reset_peak()`."""
    found = _status_kib("VmHWM")
    if found is not None:
        return found
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return None


def reset_peak() -> bool:
    """Start a new high-water mark at the current RSS; False where the kernel cannot."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False
