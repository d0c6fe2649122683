"""Test-only ComfyUI nodes for the HTTP API test (copied into a temporary custom_nodes folder):
a tiny FLUX model loader, its conditioning, and a latent shown as an image, so that a workflow
of ComfyUI's own KSampler and SaveImage runs without model files or a VAE."""

import torch

from comfy_fixtures import TINY_UNET_CONFIG


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

        config = comfy.supported_models.Flux(dict(TINY_UNET_CONFIG))
        config.set_inference_dtype(torch.float32, None)
        model = config.get_model({}, device=torch.device("cpu"))
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in model.diffusion_model.named_parameters():
                values = torch.randn(param.shape, generator=generator) * 0.2
                param.copy_(values + 1.0 if name.endswith("norm.weight") else values)
        model.eval()
        cpu = torch.device("cpu")
        return (comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu),)


class TinyFluxConditioning:
    CATEGORY = "planner-tests"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def encode(self):
        generator = torch.Generator().manual_seed(1)
        cross = torch.randn(1, 16, TINY_UNET_CONFIG["context_in_dim"], generator=generator)
        pooled = torch.randn(1, TINY_UNET_CONFIG["vec_in_dim"], generator=generator)
        return ([[cross, {"pooled_output": pooled, "guidance": 3.5}]],)


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
