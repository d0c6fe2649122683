"""Chroma (diffusers `ChromaTransformer2DModel`): FLUX.1 [schnell]'s 19 double-stream and 38
single-stream blocks with their modulation layers pruned, 8.9B parameters.

A small MLP, the guidance approximator (`distilled_guidance_layer`), makes every block's
shift/scale/gate vectors at once from the timestep: it is a non-block module, and each block
reads its slice of the approximator's output (3 vectors per single block, 6 + 6 per double
block). Text padding is masked in every block (`attention_mask` over text + image tokens), and
the pipeline runs true CFG: two forwards per step.

Checkpoint namings: diffusers, and the original single file ComfyUI loads (`double_blocks.N.`,
`single_blocks.N.`, `distilled_guidance_layer.`, possibly under `model.diffusion_model.`).
The block prefixes are FLUX.1's, so a file is told apart by its `distilled_guidance_layer`
(the key diffusers' single-file loader uses).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from runtime.dtypes import DType
from runtime.families.base import (
    CHECKPOINT_PREFIX,
    BlockInputs,
    BlockList,
    FamilyAdapter,
    block_of,
    block_pattern,
)
from runtime.families.inputs import random_tensors
from runtime.families.flux import PIXELS_PER_TOKEN_SIDE, decode_packed_latents, image_tokens_of
from runtime.model_spec import model_spec
from runtime.workload import CfgMode, Workload

_DIFFUSERS_LIST = {
    "transformer_blocks": "transformer_blocks",
    "double_blocks": "transformer_blocks",
    "single_transformer_blocks": "single_transformer_blocks",
    "single_blocks": "single_transformer_blocks",
}
_BLOCK_NAME = block_pattern(_DIFFUSERS_LIST)
_MARKER = re.compile(CHECKPOINT_PREFIX + r"distilled_guidance_layer\.in_proj\.weight$")


# lodestones/Chroma1-HD, transformer/config.json: the values diffusers' ChromaTransformer2DModel
# takes as its defaults (transformer_chroma.py), and the repository its single-file loader
# reads the config from (single_file_utils: "chroma" -> lodestones/Chroma1-HD).
_CHROMA_1_HD = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "axes_dims_rope": (16, 56, 56),
    "approximator_num_channels": 64,
    "approximator_hidden_dim": 5120,
    "approximator_layers": 5,
}

MODELS = (
    model_spec(
        id="chroma", family="chroma", config=_CHROMA_1_HD,
        storage_dtype=DType.BF16, text_tokens=512, default_steps=35, default_guidance=5.0,
        cfg=CfgMode.SEQUENTIAL,
        description="Chroma1-HD, 8.9B FLUX.1-schnell derivative with true CFG (T5 text)",
        config_source="lodestones/Chroma1-HD, transformer/config.json "
                      "(diffusers ChromaTransformer2DModel defaults)",
        stated_params="8.9B",
    ),
    model_spec(
        id="tiny-chroma", family="chroma",
        config={
            "patch_size": 1, "in_channels": 16, "num_layers": 2, "num_single_layers": 4,
            "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
            "axes_dims_rope": (4, 6, 6), "approximator_num_channels": 16,
            "approximator_hidden_dim": 32, "approximator_layers": 2,
        },
        storage_dtype=DType.FP32, text_tokens=16, default_steps=2, default_guidance=5.0,
        cfg=CfgMode.SEQUENTIAL,
        description="tiny Chroma for tests: 2 double + 4 single blocks, runs on CPU in ms",
        config_source="ours (test model)",
    ),
)


class ChromaAdapter(FamilyAdapter):
    name = "chroma"
    diffusers_model = "ChromaTransformer2DModel"
    diffusers_pipeline = "ChromaPipeline"
    block_lists = (
        BlockList(attr="transformer_blocks", kind="double"),
        BlockList(attr="single_transformer_blocks", kind="single"),
    )
    text_encoders = ("text_encoder",)

    catalog = MODELS

    def build(self, config: Mapping[str, Any], device: str = "meta", dtype=None):
        import warnings

        with warnings.catch_warnings():  # diffusers' Chroma builds FLUX's deprecated alias
            warnings.filterwarnings("ignore", message="`FluxPosEmbed` is deprecated")
            return super().build(config, device, dtype)

    def block_of_tensor(self, tensor_name: str) -> str | None:
        return block_of(_BLOCK_NAME, tensor_name, _DIFFUSERS_LIST)

    def claims(self, tensor_names: Sequence[str]) -> int:
        """The whole file where it holds the guidance approximator, else nothing: FLUX.1 and
        FLUX.2 files use the same block prefixes but lack it."""
        return len(tensor_names) if any(_MARKER.match(n) for n in tensor_names) else 0

    def convert_original(self, state: dict, shapes: Mapping[str, tuple]) -> dict:
        """diffusers' Chroma converter, except for the one step it cannot do at every width:
        each single block's fused `linear1` (q, k, v, mlp) is split at the sizes the model's
        own layers have (the converter gets a `meta` stand-in of the shape it expects)."""
        from diffusers.loaders.single_file_utils import convert_chroma_transformer_checkpoint_to_diffusers as convert

        from runtime.families.fused_linear1 import convert_splitting_linear1

        return convert_splitting_linear1(state, shapes, convert)

    # ------------------------------------------------------------------ inputs

    def block_inputs(self, model, kind: str, workload: Workload, device, dtype) -> BlockInputs:
        from diffusers.models.transformers.transformer_flux import FluxPosEmbed

        config = model.config
        dim = config.num_attention_heads * config.attention_head_dim
        batch = workload.forward_batch
        image_tokens = image_tokens_of(workload)
        text_tokens = workload.text_tokens
        rand = random_tensors(device, dtype)
        rope = FluxPosEmbed(theta=10000, axes_dim=list(config.axes_dims_rope))
        cos, sin = rope(_position_ids(workload))
        shared = {
            "image_rotary_emb": (cos.to(device), sin.to(device)),
            "attention_mask": _attention_mask(workload, device, dtype),
        }
        if kind == "double":  # its 6 image and 6 text vectors of the approximator's output
            kwargs = {
                "hidden_states": rand(batch, image_tokens, dim),
                "encoder_hidden_states": rand(batch, text_tokens, dim),
                "temb": rand(batch, 12, dim),
            }
        else:  # text and image tokens joined, 3 vectors
            kwargs = {"hidden_states": rand(batch, text_tokens + image_tokens, dim),
                      "temb": rand(batch, 3, dim)}
        return BlockInputs(args=(), kwargs=kwargs | shared)

    def model_inputs(self, model, workload: Workload, device, dtype) -> dict[str, Any]:
        import torch

        config = model.config
        batch = workload.forward_batch
        image_tokens = image_tokens_of(workload)
        rand = random_tensors(device, dtype)
        ids = _position_ids(workload)
        return {
            "hidden_states": rand(batch, image_tokens, config.in_channels),
            "encoder_hidden_states": rand(batch, workload.text_tokens, config.joint_attention_dim),
            "timestep": torch.full((batch,), 0.5, device=device, dtype=dtype),
            "txt_ids": ids[: workload.text_tokens].to(device=device, dtype=dtype),
            "img_ids": ids[workload.text_tokens:].to(device=device, dtype=dtype),
            "attention_mask": _attention_mask(workload, device, dtype),
            "return_dict": False,
        }

    # ------------------------------------------------------------------ generation

    def prompt_kwargs(self, pipe, prompt: str, workload: Workload, guidance: float, device) -> dict:
        embeds, _, mask, negative, _, negative_mask = pipe.encode_prompt(
            prompt, negative_prompt="", device=device,
            do_classifier_free_guidance=guidance > 1, max_sequence_length=workload.text_tokens,
        )
        kwargs = {
            "prompt_embeds": embeds, "prompt_attention_mask": mask, "guidance_scale": guidance,
            "max_sequence_length": workload.text_tokens,
        }
        if negative is not None:
            kwargs |= {"negative_prompt_embeds": negative,
                       "negative_prompt_attention_mask": negative_mask}
        return kwargs

    def decode(self, pipe, latents, workload: Workload) -> list:
        return decode_packed_latents(pipe, latents, workload)


def _position_ids(workload: Workload):
    """Text then image position ids as ChromaPipeline makes them, on the CPU: text tokens all
    at 0, image tokens at (0, row, column)."""
    import torch

    side = PIXELS_PER_TOKEN_SIDE
    rows, cols = workload.height // side, workload.width // side
    image = torch.zeros(rows, cols, 3)
    image[..., 1] += torch.arange(rows)[:, None]
    image[..., 2] += torch.arange(cols)[None, :]
    return torch.cat([torch.zeros(workload.text_tokens, 3), image.reshape(rows * cols, 3)])


def _attention_mask(workload: Workload, device, dtype):
    """The mask ChromaPipeline passes over text + image tokens: a prompt filling a quarter of
    the text length, plus the one padding token Chroma keeps, then every image token."""
    import torch

    prompt = max(1, workload.text_tokens // 4)
    text = (torch.arange(workload.text_tokens) <= prompt).to(dtype)
    mask = torch.cat([text, torch.ones(image_tokens_of(workload), dtype=dtype)])
    return mask.expand(workload.forward_batch, -1).contiguous().to(device)
