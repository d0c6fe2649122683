"""Generic block discovery (runtime/discovery.py) and apply_auto's use of it: block lists from
the module tree, kinds by class and shape, the execution order recorded from a real forward,
and a model run out of the recorded order is noticed."""

from __future__ import annotations

import pytest
import torch

from auto_model_cases import CASES
from planner.app.auto import apply_auto
from runtime.discovery import OrderRecorder, find_blocks, record_order
from runtime.errors import UserError


class Block(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.a = torch.nn.Linear(dim, dim)
        self.b = torch.nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.b(torch.tanh(self.a(x)))


class Plain(torch.nn.Module):
    """Not diffusers: no config, positional inputs, a list run in an order of its own
    (`order`: indices into `layers`), like a ComfyUI `diffusion_model`."""

    def __init__(self, dim: int = 32, n: int = 8) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(dim, dim)
        self.layers = torch.nn.ModuleList(Block(dim) for _ in range(n))
        self.head = torch.nn.Linear(dim, dim)
        self.order = list(reversed(range(n)))

    def forward(self, x, scale):
        x = self.embed(x) * scale
        for i in self.order:
            x = self.layers[i](x)
        return self.head(x)


def _called(model, names, run) -> list[str]:
    """The order the forward calls `names`, seen by hooks of the test's own."""
    seen, hooks = [], []
    for name in names:
        hooks.append(model.get_submodule(name).register_forward_pre_hook(
            lambda m, a, n=name: seen.append(n)))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_blocks_found_from_the_tree_in_declaration_order_first():
    model = Plain()
    found = find_blocks(model)
    assert not found.recorded
    assert found.names() == tuple(f"layers.{i}" for i in range(8))
    assert {b.kind for b in found.blocks} == {"Block"}


def test_recorded_order_is_the_order_the_forward_runs():
    torch.manual_seed(0)
    model = Plain()
    x = torch.randn(2, 32)
    recorded = record_order(model, lambda: model(x, 0.5))
    assert recorded.recorded
    assert recorded.names() == tuple(f"layers.{i}" for i in reversed(range(8)))


def test_wan_vace_interleaving_is_recorded_as_run():
    case = CASES["WanVACETransformer3DModel"]
    torch.manual_seed(0)
    model = case.build()
    inputs = case.inputs()
    found = find_blocks(model)
    run = lambda: model(**inputs)  # noqa: E731
    with torch.no_grad():
        called = _called(model, found.names(), run)
        recorded = record_order(model, run)
    assert list(recorded.names()) == called
    assert list(recorded.names()) != list(found.names())  # VACE blocks run before `blocks`
    assert recorded.names()[0].startswith("vace_blocks.")
    assert {b.kind for b in recorded.blocks} >= {"WanTransformerBlock", "WanVACETransformerBlock"}


def test_unet_blocks_are_down_mid_up_and_nested_lists_are_not_counted_twice():
    case = CASES["UNet2DModel"]
    with torch.device("meta"):
        model = case.build()
    names = find_blocks(model).names()
    assert "mid_block" in names
    assert all(n.count(".") <= 1 for n in names)  # never `down_blocks.0.resnets.0`
    assert {n.split(".")[0] for n in names} == {"down_blocks", "mid_block", "up_blocks"}
    torch.manual_seed(0)
    model = case.build()
    with torch.no_grad():
        recorded = record_order(model, lambda: model(**case.inputs()))
    order = [n.split(".")[0] for n in recorded.names()]
    assert order == sorted(order, key=["down_blocks", "mid_block", "up_blocks"].index)


def test_kinds_split_one_class_by_shape():
    with torch.device("meta"):
        model = CASES["T5EncoderModel"].build()
    kinds = [b.kind for b in find_blocks(model).blocks]
    assert kinds[0] == "T5Block" and set(kinds[1:]) == {"T5Block.1"}  # relative attention bias


def test_a_block_sharing_its_tensors_with_the_rest_is_left_out():
    model = Plain()
    model.layers[3].a.weight = model.embed.weight  # tied
    assert "layers.3" not in find_blocks(model).names()


def test_blocks_called_twice_or_never_are_not_blocks():
    torch.manual_seed(0)
    model = Plain()
    model.order = [0, 1, 1, 2, 4, 5, 6, 7]  # 1 twice, 3 never
    with OrderRecorder(model, find_blocks(model)) as recorder:
        model(torch.randn(2, 32), 1.0)
    found = recorder.result()
    assert found.names() == ("layers.0", "layers.2", "layers.4", "layers.5", "layers.6", "layers.7")
    assert set(found.dropped) == {"layers.1", "layers.3"}


def test_a_model_without_block_lists_is_refused_clearly():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    with pytest.raises(UserError, match="no list of repeated blocks"):
        find_blocks(torch.nn.Linear(8, 8))
    with pytest.raises(UserError, match="Sequential has no list"):
        find_blocks(model)


def _auto(model, tmp_path, fraction=2):
    total = sum(t.numel() * t.element_size() for t in model.parameters())
    return apply_auto(model, vram=total // fraction, device="cpu", store=f"sqlite:///{tmp_path}/s.db")


def test_running_out_of_the_recorded_order_is_noticed(tmp_path):
    """The ring streams in the recorded order: a forward that runs the blocks in another order
    still computes the same numbers but restarts the ring (`resyncs`); recorded in declaration
    order instead, the reversed forward would resync from the first tuned forward on."""
    torch.manual_seed(0)
    model = Plain()
    x = torch.randn(2, 32)
    with torch.no_grad():
        want = model(x, 0.5)
        handle = _auto(model, tmp_path)
        try:
            assert torch.equal(model(x, 0.5), want)
            assert handle.tuned and handle.plan.blocks[0].name == "layers.7"
            assert torch.equal(model(x, 0.5), want) and handle.resyncs == 0
            model.order = list(range(8))  # now in declaration order: not the recorded one
            plain_order = model(x, 0.5)
            assert handle.resyncs > 0
        finally:
            handle.remove()
        assert torch.equal(model(x, 0.5), plain_order)


def test_non_diffusers_module_with_positional_inputs(tmp_path):
    torch.manual_seed(0)
    model = Plain(n=12)
    x = torch.randn(3, 32)
    with torch.no_grad():
        want = model(x, 2.0)
        handle = _auto(model, tmp_path)
        try:
            for _ in range(3):
                assert torch.equal(model(x, 2.0), want)
            assert handle.tuned and 1 <= handle.stats.resident_blocks < 12
            assert handle.model_id.startswith("auto:Plain:")
        finally:
            handle.remove()


class IteratesChildren(Plain):
    """A forward that never calls its list's elements: it runs their children itself."""

    def forward(self, x, scale):
        x = self.embed(x) * scale
        for i in self.order:
            block = self.layers[i]
            x = x + block.b(torch.tanh(block.a(x)))
        return self.head(x)


def test_children_called_directly_are_the_blocks(tmp_path):
    torch.manual_seed(0)
    model = IteratesChildren()
    x = torch.randn(2, 32)
    with torch.no_grad():
        want = model(x, 1.0)
        recorded = record_order(model, lambda: model(x, 1.0))
        expected = tuple(f"layers.{i}.{c}" for i in reversed(range(8)) for c in "ab")
        assert recorded.names() == expected
        assert {b.kind for b in recorded.blocks} == {"Linear"}
        handle = _auto(model, tmp_path)
        in_slot = []
        probe = model.layers[3].a.register_forward_pre_hook(
            lambda m, a: in_slot.append(_in_ring(m.weight, handle)))
        try:
            for _ in range(3):
                assert torch.equal(model(x, 1.0), want)
            # streamed in the stream-all first forward, though `layers.3` itself is never called
            # (on CUDA its weights would otherwise stay in host memory); a block of its own later
            assert in_slot[0]
            assert handle.tuned and [b.name for b in handle.plan.blocks] == list(expected)
            assert handle.resyncs == 0 and handle.stats.resident_blocks >= 1
        finally:
            probe.remove()
            handle.remove()


def _in_ring(tensor, handle) -> bool:
    """Whether `tensor`'s data lies in one of the ring's slot buffers right now."""
    from runtime.engine.handle import applied_handle

    inner = applied_handle(handle.model)
    ptr = tensor.data_ptr()
    return any(b.data_ptr() <= ptr < b.data_ptr() + b.numel() * b.element_size()
               for b in inner.ring_buffers())
