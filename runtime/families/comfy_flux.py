"""FLUX.1 and FLUX.2 as ComfyUI builds them (`comfy.ldm.flux.model.Flux`, one class for both):
the original BFL layout, `double_blocks` and `single_blocks`, made of ComfyUI's `comfy.ops`
layers.

ComfyUI is not a dependency: this adapter is only asked about a module once ComfyUI has been
imported by whoever built that module (the node pack, running inside ComfyUI). It has no catalog
entries of its own. Plans are tuned for the diffusers families (`flux`: `flux-dev`, ...;
`flux2`) and carried over by block correspondence (`adopt_plan`): diffusers' `transformer_blocks.N` is BFL's
`double_blocks.N`, `single_transformer_blocks.N` is `single_blocks.N`. The blocks hold the same
tensors under other names (q, k, v fused into `qkv`; q, k, v and the MLP input fused into
`linear1`), so every block's bytes are equal and are checked against the module as always.

The module builds on `meta` (exact bytes, no memory), but its forward does not run there:
ComfyUI's attention asks the device how much memory it has. Nothing needs it to: FLOPs and
activation peaks are traced on the diffusers family the plans are tuned for.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from typing import Any, Mapping

from runtime.errors import PlanMismatchError
from runtime.families.base import BlockInputs, BlockList, FamilyAdapter
from runtime.families.inputs import random_tensors
from runtime.workload import Workload

COMFY_FLUX_MODULE = "comfy.ldm.flux.model"
SOURCE_FAMILIES = ("flux", "flux2")  # the diffusers families whose plans this family adopts

# diffusers block list -> ComfyUI (BFL) block list
_FROM_DIFFUSERS = {"transformer_blocks": "double_blocks", "single_transformer_blocks": "single_blocks"}
_PLAN_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)$")

# Latent pixels per token side: the VAE downsamples 8x and the model patchifies 2x2.
PIXELS_PER_TOKEN_SIDE = 16


class ComfyFluxAdapter(FamilyAdapter):
    name = "comfy-flux"
    block_lists = (
        BlockList(attr="double_blocks", kind="double"),
        BlockList(attr="single_blocks", kind="single"),
    )

    def model_class(self) -> type:
        from comfy.ldm.flux.model import Flux

        return Flux

    def recognises(self, module) -> bool:
        # Never import ComfyUI to answer: a module of its class exists only once it is imported.
        loaded = sys.modules.get(COMFY_FLUX_MODULE)
        return loaded is not None and type(module) is loaded.Flux

    def build(self, config: Mapping[str, Any], device: str = "meta", dtype=None):
        """`config` is a ComfyUI `unet_config` of FLUX (`image_model: flux`), built with
        ComfyUI's `comfy.ops.disable_weight_init` layers as its loader does."""
        import comfy.ops
        import torch

        kwargs = {k: v for k, v in dict(config).items() if k != "image_model"}
        model = self.model_class()(
            **kwargs, dtype=dtype, device=device, operations=comfy.ops.disable_weight_init
        )
        if dtype is not None:
            model = torch.nn.Module.to(model, dtype)
        return model.eval()

    def block_of_tensor(self, tensor_name: str) -> str | None:
        """None: this family reads no checkpoints. ComfyUI loads the files; `planner inspect`
        and `planner apply` read the same files (BFL naming included) as the `flux` family,
        which must win the checkpoint's family vote alone."""
        return None

    def block_inputs(self, model, kind: str, workload: Workload, device, dtype) -> BlockInputs:
        batch = workload.forward_batch
        image_tokens = image_tokens_of(workload)
        text_tokens = workload.text_tokens
        rand = random_tensors(device, dtype)
        pe = _rope(model, batch, text_tokens + image_tokens, device)
        vec = rand(batch, model.hidden_size)
        if model.params.global_modulation:  # FLUX.2: one modulation for all blocks of a kind
            vec = (
                (model.double_stream_modulation_img(vec), model.double_stream_modulation_txt(vec))
                if kind == "double" else model.single_stream_modulation(vec)[0]
            )
        if kind == "double":
            kwargs = {
                "img": rand(batch, image_tokens, model.hidden_size),
                "txt": rand(batch, text_tokens, model.hidden_size),
                "vec": vec,
                "pe": pe,
            }
            return BlockInputs(args=(), kwargs=kwargs)
        hidden = rand(batch, text_tokens + image_tokens, model.hidden_size)
        return BlockInputs(args=(hidden,), kwargs={"vec": vec, "pe": pe})

    def model_inputs(self, model, workload: Workload, device, dtype) -> dict[str, Any]:
        import torch

        params = model.params
        batch = workload.forward_batch
        rand = random_tensors(device, dtype)
        side = PIXELS_PER_TOKEN_SIDE // 2  # latent pixels per image pixel side: 1/8
        inputs = {
            "x": rand(batch, params.in_channels, workload.height // side, workload.width // side),
            "timestep": torch.full((batch,), 0.5, device=device, dtype=dtype),
            "context": rand(batch, workload.text_tokens, params.context_in_dim),
        }
        if params.vec_in_dim is not None:
            inputs["y"] = rand(batch, params.vec_in_dim)
        if params.guidance_embed:
            inputs["guidance"] = torch.full((batch,), 3.5, device=device, dtype=dtype)
        return inputs

    # ------------------------------------------------------------------ plans

    def adopt_plan(self, plan):
        """A plan tuned for the diffusers FLUX family, renamed block by block for this one.

        Placement, cast, bytes, workload and target are kept; `apply_plan` then checks every
        block's bytes against the ComfyUI module. A plan of another family is refused."""
        if plan.model.family == self.name:
            return plan
        if plan.model.family not in SOURCE_FAMILIES:
            raise PlanMismatchError(
                f"the plan is for a {plan.model.family} model ({plan.model.id}) but this is "
                f"ComfyUI's FLUX: use a plan tuned for a flux or flux2 model "
                f"(planner tune --model flux-dev)"
            )
        blocks = []
        for block in plan.blocks:
            match = _PLAN_BLOCK.match(block.name)
            if match is None:
                raise PlanMismatchError(
                    f"block {block.name} of the plan for {plan.model.id} is not a FLUX block: "
                    f"export the plan again from the store"
                )
            name = f"{_FROM_DIFFUSERS[match.group(1)]}.{match.group(2)}"
            blocks.append(dataclasses.replace(block, name=name))
        model = dataclasses.replace(plan.model, family=self.name)
        return dataclasses.replace(plan, model=model, blocks=tuple(blocks))

    # ------------------------------------------------------------------ generation

    def pipeline_class(self) -> type:
        raise NotImplementedError("ComfyUI's FLUX runs in ComfyUI's sampler, not a pipeline")

    def prompt_kwargs(self, pipe, prompt: str, workload: Workload, guidance: float, device) -> dict:
        raise NotImplementedError("ComfyUI's FLUX runs in ComfyUI's sampler, not a pipeline")

    def decode(self, pipe, latents, workload: Workload) -> list:
        raise NotImplementedError("ComfyUI's FLUX runs in ComfyUI's sampler, not a pipeline")


def image_tokens_of(workload: Workload) -> int:
    side = PIXELS_PER_TOKEN_SIDE
    return (workload.height // side) * (workload.width // side)


def _rope(model, batch: int, tokens: int, device):
    """The rotary embedding the model's own `pe_embedder` makes for `tokens` positions."""
    import torch

    ids = torch.zeros(batch, tokens, len(model.params.axes_dim), device=device)
    return model.pe_embedder(ids)
