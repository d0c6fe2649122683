"""Test-only ComfyUI nodes for the HTTP API test (copied into a temporary custom_nodes folder):
a tiny FLUX model loader, its conditioning, and a latent shown as an image, so that a workflow
of ComfyUI's own KSampler and SaveImage runs without model files or a VAE."""

import torch

from comfy_fixtures import build_tiny_flux, conditioning


class TinyFluxLoader:
    CATEGORY = "planner-tests"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        import comfy.model_patcher
        import comfy.supported_models

        return (build_tiny_flux(comfy),)


class TinyFluxConditioning:
    CATEGORY = "planner-tests"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def encode(self):
        return (conditioning(),)


class TinyLatent:
    """The tiny FLUX's 4-channel latent (EmptyLatentImage's zeros would be widened to FLUX's
    16 latent channels by KSampler); not zero, and ignored at denoise 1.0 all the same."""

    CATEGORY = "planner-tests"
    FUNCTION = "make"
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def make(self):
        return ({"samples": torch.full((1, 4, 4, 4), 0.1)},)


class LatentAsImage:
    CATEGORY = "planner-tests"
    FUNCTION = "show"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",)}}

    def show(self, samples):
        latent = samples["samples"][:, :3]
        return (torch.sigmoid(latent).permute(0, 2, 3, 1).contiguous(),)


NODE_CLASS_MAPPINGS = {
    "TinyFluxLoader": TinyFluxLoader,
    "TinyFluxConditioning": TinyFluxConditioning,
    "TinyLatent": TinyLatent,
    "LatentAsImage": LatentAsImage,
}
