"""offload-planner's ComfyUI nodes: "Offload plan: apply", "Offload plan: tune" and
"Offload plan: auto".

Link or copy this folder into ComfyUI's `custom_nodes/` and install offload-planner into
ComfyUI's Python (`pip install -e /path/to/offload-planner`); see the README. Importing the pack
defines the node classes only: nothing is loaded, measured or opened until a node runs.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
