"""The compute device a plan runs on, from what the caller gave (None: CUDA when available)."""

from __future__ import annotations

import torch

from runtime.errors import UserError


def resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"device {device!r} is not a torch device: use cuda, cuda:0 or cpu") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device} was asked for but CUDA is not available: use cpu")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        raise UserError(f"device {device} is not supported: use cuda or cpu")
    return device


def device_name(device: torch.device) -> str:
    """The name a plan's target carries for `device`: the GPU's name, or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def synchronize(device: torch.device) -> None:
    """Wait for `device` to finish its work (on the CPU there is none to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
