"""Shared fixtures: the `gpu` marker's skip rule and small real FLUX models; the default store
and the model cache live in test-private directories."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_default_store(tmp_path_factory, monkeypatch):
    """Commands that use the default store write into a test-private data directory,
    never the user's; a PLANNER_DB_URL from the environment does not leak in."""
    monkeypatch.delenv("PLANNER_DB_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.getbasetemp() / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device; none on this machine")


@pytest.fixture
def cuda_device():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device; none on this machine")
    return torch.device("cuda", torch.cuda.current_device())


def build_tiny_flux(seed: int = 0, dtype=None):
    """The catalog's tiny-flux with seeded random weights, on CPU, in eval mode."""
    import torch

    from runtime.catalog import get_model
    from runtime.families import get_family

    spec = get_model("tiny-flux")
    torch.manual_seed(seed)
    return get_family(spec.family).build(spec.config, device="cpu", dtype=dtype)


@pytest.fixture
def tiny_flux():
    return build_tiny_flux()
