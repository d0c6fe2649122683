"""The tool's version, as recorded in plans, profiles and runs."""

from importlib import metadata

try:
    TOOL_VERSION = metadata.version("offload-planner")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    TOOL_VERSION = "0.0.0+source"
