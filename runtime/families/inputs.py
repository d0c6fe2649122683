"""Helpers family adapters share to make block and model inputs."""

from __future__ import annotations


def random_tensors(device, dtype):
    """A seeded maker of random tensors, drawn on the CPU so every device gets the same values;
    on `meta` nothing is drawn (only shapes exist there)."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        if str(device) == "meta":
            return torch.empty(*shape, device="meta", dtype=dtype)
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    return rand
