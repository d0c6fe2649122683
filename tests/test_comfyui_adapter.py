"""The comfy-flux adapter's parts that need no ComfyUI: plan adoption and recognition.

(Everything that runs ComfyUI is in test_comfyui_flux.py and test_comfyui_nodes.py.)
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from runtime.dtypes import DType
from runtime.errors import PlanMismatchError
from runtime.families import family_of_module, get_family
from runtime.inventory import inventory
from runtime.plan import Target, build_plan, dumps_plan, loads_plan
from runtime.workload import Workload


def _plan(streamed):
    return build_plan(
        inventory("flux-dev", DType.BF16), set(streamed), workload=Workload(height=1024, width=1024),
        target=Target("rtx-4060", 8 << 30), prefetch_depth=3,
    )


def test_a_flux_dev_plan_is_renamed_block_for_block_and_nothing_else_changes():
    plan = _plan({"transformer_blocks.18", "single_transformer_blocks.0", "single_transformer_blocks.37"})
    adopted = get_family("comfy-flux").adopt_plan(plan)
    assert adopted.model == dataclasses.replace(plan.model, family="comfy-flux")
    assert [b.name for b in adopted.blocks] == (
        [f"double_blocks.{i}" for i in range(19)] + [f"single_blocks.{i}" for i in range(38)]
    )
    for mine, theirs in zip(adopted.blocks, plan.blocks):
        assert dataclasses.replace(mine, name=theirs.name) == theirs
    assert {b.name for b in adopted.streamed} == {"double_blocks.18", "single_blocks.0", "single_blocks.37"}
    assert (adopted.workload, adopted.target, adopted.prefetch_depth) == (plan.workload, plan.target, 3)
    assert get_family("comfy-flux").adopt_plan(adopted) is adopted
    assert loads_plan(dumps_plan(adopted)) == adopted  # still a valid plan file


def test_a_flux2_plan_is_adopted_too():
    inv = inventory("tiny-flux2", DType.FP32)
    plan = build_plan(
        inv, {"single_transformer_blocks.3"}, workload=Workload(height=32, width=32, text_tokens=16),
        target=Target("rtx-4060", 1 << 30),
    )
    adopted = get_family("comfy-flux").adopt_plan(plan)
    assert adopted.model.family == "comfy-flux" and adopted.model.id == "tiny-flux2"
    assert [b.name for b in adopted.streamed] == ["single_blocks.3"]


def test_plans_of_other_families_or_blocks_are_refused():
    plan = _plan(set())
    adapter = get_family("comfy-flux")
    with pytest.raises(PlanMismatchError, match="use a plan tuned for a flux or flux2 model"):
        adapter.adopt_plan(dataclasses.replace(plan, model=dataclasses.replace(plan.model, family="sd3")))
    odd = dataclasses.replace(plan.blocks[0], name="blocks.0")
    with pytest.raises(PlanMismatchError, match="blocks.0 of the plan for flux-dev is not a FLUX block"):
        adapter.adopt_plan(dataclasses.replace(plan, blocks=(odd,) + plan.blocks[1:]))


def test_recognising_modules_never_imports_comfyui():
    code = (
        "import sys\n"
        "from runtime.families import family_of_module, get_family, families\n"
        "from runtime.catalog import get_model, all_models\n"
        "m = get_family('flux').build(get_model('tiny-flux').config, device='meta')\n"
        "assert family_of_module(m).name == 'flux'\n"
        "assert get_family('comfy-flux').recognises(m) is False\n"
        "assert 'comfy-flux' in families() and get_family('comfy-flux').models() == ()\n"
        "assert all(s.family != 'comfy-flux' for s in all_models().values())\n"
        "assert not [n for n in sys.modules if n == 'comfy' or n.startswith('comfy.')]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

