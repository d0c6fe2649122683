"""The worker behind `apply_plan`: place resident weights, pack streamed ones, hook the ring.

Everything done to the model is recorded in `AppliedState` so that `undo()` (on `remove()`,
or when applying fails half-way) puts back every tensor's device, dtype and values, the same
tensor objects, and leaves no hook behind. Adapter weights (LoRA) travel with their block:
packed with a streamed block, resident with a resident one (`runtime.engine.adapters`).
"""

from __future__ import annotations

import warnings

import torch

from runtime.engine import adapters, disk_tier, packing, quantized, staging
from runtime.engine.casting import install_casts
from runtime.engine.checks import check_plan
from runtime.engine.conversion import convert_blocks, converts
from runtime.engine.host_memory import decide_host_memory
from runtime.engine.ring import Ring
from runtime.engine.stats import OffloadStats
from runtime.dtypes import DType
from runtime.inventory import device_bytes_by_dtype
from runtime.plan import CastMode, Placement, Tier
from runtime.tiers import staging_bytes
from runtime.schedule import ring_of

class AppliedState:
    """What was done to one model, in the order it was done."""

    def __init__(self, device: torch.device, adapter_signature: tuple) -> None:
        # adapter tensors and merges present when the plan was applied (adapters.signature)
        self.adapter_signature = adapter_signature
        self.adapter_ids: frozenset[int] = adapter_signature[0]
        self.moved: list[tuple[torch.Tensor, torch.device, torch.dtype, str]] = []
        self.dequantized: list[tuple[torch.Tensor, torch.Tensor]] = []  # tensor, packed bytes
        self.layouts: list[packing.Layout] = []
        self.host_buffers: list[dict[str, torch.Tensor] | None] = []  # None: on the disk tier
        self.pack_file: disk_tier.PackFile | None = None
        self.host_views: list[list[torch.Tensor]] = []
        self.pinned: list[bool] = []
        self.ring: Ring | None = None
        self.hooks: list = []
        self.casts: list = []
        self.resident_block_count = 0
        self.conversions = None  # conversion.BlockConversions of the plan's converted blocks

    def stats(self, device: torch.device) -> OffloadStats:
        def nbytes(kind: str) -> int:
            return sum(t.numel() * t.element_size() for t, _, _, k in self.moved if k == kind)

        pack = [sum(t.numel() * t.element_size() for t in (b or {}).values()) for b in self.host_buffers]
        reader = self.ring.disk if self.ring is not None else None
        adapter_bytes = sum(
            t.numel() * t.element_size() for t, _, _, _ in self.moved if id(t) in self.adapter_ids
        ) + sum(
            e.numel * DType(e.group).element_size
            for layout in self.layouts for e in layout.entries if id(e.tensor) in self.adapter_ids
        )
        return OffloadStats(
            device=str(device),
            resident_blocks=self.resident_block_count,
            streamed_blocks=len(self.layouts),
            resident_bytes=nbytes("resident"),
            non_block_bytes=nbytes("non_block"),
            ring_bytes=self.ring.nbytes if self.ring is not None else 0,
            slots=self.ring.schedule.slots if self.ring is not None else 0,
            pinned_bytes=sum(b for b, p in zip(pack, self.pinned) if p),
            pageable_bytes=sum(b for b, p in zip(pack, self.pinned) if not p),
            adapter_bytes=adapter_bytes,
            disk_bytes=self.pack_file.nbytes if self.pack_file is not None else 0,
            staging_bytes=reader.staging_bytes if reader is not None else 0,
            direct_io=self.pack_file.direct if self.pack_file is not None else None,
        )

    def undo(self) -> None:
        self._unhook()
        while self.layouts:
            layout, views = self.layouts.pop(), self.host_views.pop()
            packing.restore(layout, views)
            self.host_buffers.pop()
            self.pinned.pop()
        self._close_pack()  # the views read from it were restored above
        packed = {id(t): data for t, data in self.dequantized}
        back = []
        for tensor, orig_device, orig_dtype, _ in reversed(self.moved):
            if id(tensor) in packed:
                tensor.data = packed[id(tensor)]
            else:
                back.append((tensor, orig_device, orig_dtype))
        _move_all(back, staging.to_host)
        self.moved = []
        self.dequantized = []
        if self.conversions is not None:
            self.conversions.undo()
            self.conversions = None

    def drop(self, model) -> None:
        """Unhook and free every tensor of `model` (see `OffloadHandle.release`)."""
        self._unhook()
        drop_tensors(model)
        self.layouts, self.host_buffers, self.host_views, self.pinned = [], [], [], []
        self.moved, self.dequantized = [], []
        self._close_pack()

    def _unhook(self) -> None:
        """The block hooks and cast hooks removed, the ring closed."""
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        for cast in self.casts:
            cast.remove()
        self.casts = []
        if self.ring is not None:
            self.ring.close()
            self.ring = None

    def _close_pack(self) -> None:
        if self.pack_file is not None:
            self.pack_file.close()
            self.pack_file = None


def drop_tensors(model) -> None:
    """Every parameter and buffer of `model` emptied: its storage is freed."""
    for tensor in packing.unique_tensors(model):
        tensor.data = torch.empty(0, dtype=tensor.dtype)


def apply_state(model, adapter, plan, device: torch.device) -> AppliedState:
    """Everything `apply` does to the model's tensors and blocks, recorded for undo. Blocks
    the plan gives their own format or pruned units are converted first (and put back last)."""
    conversions = convert_blocks(adapter.blocks(model), plan) if converts(plan) else None
    try:
        state = _apply_converted(model, adapter, plan, device)
    except BaseException:
        if conversions is not None:
            conversions.undo()
        raise
    state.conversions = conversions
    if conversions is not None and not quantized.has_quantized(model):
        compute = plan.model.compute_dtype.torch()
        for block in conversions.converted:  # fp8 matrices and their bf16 vectors
            state.casts.extend(quantized.install_dequant(block, compute))
    return state


def _apply_converted(model, adapter, plan, device: torch.device) -> AppliedState:
    inv = check_plan(model, adapter, plan)
    compute = plan.model.compute_dtype.torch()
    blocks = adapter.blocks(model)
    by_name = {b.name: b for b in plan.blocks}
    streamed = [by_name[name].placement is Placement.STREAMED for name, _, _ in blocks]
    pre = [by_name[name].cast is CastMode.PRE for name, _, _ in blocks]
    on_disk = [by_name[name].tier is Tier.DISK for name, _, _ in blocks if by_name[name].placement is Placement.STREAMED]
    layouts = []
    adapter_signature = adapters.signature(model)
    for (name, _, module), info, s, p in zip(blocks, inv.blocks, streamed, pre):
        if s:
            layout = packing.layout_of(module, p, compute)
            # NF4's absmax and code books stay beside the packed bytes: the plan counts them
            assert plan.model.storage_dtype is DType.NF4 or \
                _base_bytes(layout, adapter_signature[0]) == \
                device_bytes_by_dtype(info, p, plan.model.compute_dtype), name
            layouts.append(layout)
    freed = _host_bytes_released(model, blocks, streamed, device, pre)
    in_ram = [l.bytes for l, d in zip(layouts, on_disk) if not d]
    disk_staging = staging_bytes([l.bytes for l, d in zip(layouts, on_disk) if d])
    decision = decide_host_memory(in_ram + ([disk_staging] if disk_staging else []), freed, _wants_pinned(plan))
    if decision.warning:
        warnings.warn(decision.warning, stacklevel=3)

    state = AppliedState(device, adapter_signature)
    try:
        _place_resident(state, model, blocks, streamed, pre, compute, device)
        if layouts:
            pinned = iter(decision.pinned)
            _pack_streamed(state, layouts, [False if d else next(pinned) for d in on_disk], on_disk, device)
            reader = None
            if state.pack_file is not None:
                state.pack_file.seal()
                reader = disk_tier.DiskReader(state.pack_file, [j for j, d in enumerate(on_disk) if d], device)
            state.ring = Ring(
                ring_of(streamed, plan.prefetch_depth),
                state.layouts, state.host_buffers, state.host_views, device, disk=reader,
            )
            modules = [module for (_, _, module), s in zip(blocks, streamed) if s]
            _hook_streamed(state, modules)
        for (_, _, module), s, p in zip(blocks, streamed, pre):
            if not p:
                state.casts.extend(install_casts(module, compute))
        if quantized.has_quantized(model):
            state.casts.extend(quantized.install_dequant(model, compute))
    except BaseException:
        state.undo()
        raise
    return state


def _base_bytes(layout, adapter_ids: frozenset[int]) -> dict[str, int]:
    """A block layout's bytes by group without its adapter tensors (what the plan counts)."""
    out: dict[str, int] = {}
    for e in layout.entries:
        if id(e.tensor) not in adapter_ids:
            out[e.group] = out.get(e.group, 0) + e.numel * DType(e.group).element_size
    return out


def _wants_pinned(plan) -> bool:
    from runtime.plan import HostMemory

    return plan.host_memory is HostMemory.PINNED


def _host_bytes_released(model, blocks, streamed, device: torch.device, pre) -> int:
    """Host bytes of original tensors that applying frees (packed, or moved to the device);
    packed quantized bytes dequantized on the host (`pre`) are kept for `remove()`."""
    leaving = set()
    for (_, _, module), s, p in zip(blocks, streamed, pre):
        if s or device.type != "cpu":
            leaving.update(id(t) for t in packing.unique_tensors(module)
                           if not (p and quantized.is_packed(t)))
    if device.type != "cpu":
        leaving.update(id(t) for t in packing.unique_tensors(model) if not quantized.is_packed(t))
    return sum(
        t.numel() * t.element_size()
        for t in packing.unique_tensors(model)
        if id(t) in leaving and t.device.type == "cpu"
    )


def _place_resident(state, model, blocks, streamed, pre, compute, device) -> None:
    """Resident blocks and non-block modules to the device; fp8 cast where the plan says.
    The moves are recorded as they are decided and made together at the end (`_move_all`)."""
    quant_model = quantized.has_quantized(model)
    in_blocks = set()
    moves: list[tuple[torch.Tensor, torch.device, torch.dtype]] = []
    for (_, _, module), s, p in zip(blocks, streamed, pre):
        tensors = packing.unique_tensors(module)
        in_blocks.update(id(t) for t in tensors)
        if not s:
            state.resident_block_count += 1
            for tensor in tensors:
                if quantized.is_packed(tensor) and p:  # dequantized on the host, then moved
                    _dequantize(state, tensor, device, compute, "resident")
                    continue
                _move(state, moves, tensor, device,
                      packing.device_dtype(tensor.dtype, p, compute), "resident")
    for tensor in packing.unique_tensors(model):
        if id(tensor) not in in_blocks:
            # non-block modules always hold the compute dtype (cast as `pre` does): the
            # pipeline reads the model's dtype from its first parameter, which is one of them
            if quantized.is_packed(tensor) or (
                quantized.quant_info(tensor) is None and tensor.is_floating_point()
                and tensor.dtype != compute and quant_model
            ):  # quantized checkpoints: non-block modules in the compute dtype, exactly undone
                _dequantize(state, tensor, device, compute, "non_block")
                continue
            dtype = packing.device_dtype(tensor.dtype, True, compute)
            _move(state, moves, tensor, device, dtype, "non_block")
    _move_all(moves, lambda sources, dtypes: staging.to_device(sources, dtypes, device))


def _move(state, moves, tensor, device, dtype, kind: str) -> None:
    state.moved.append((tensor, tensor.device, tensor.dtype, kind))
    moves.append((tensor, device, dtype))


def _move_all(moves, staged_copy) -> None:
    """Give each tensor of `moves` (tensor, device, dtype) its data on that device in that
    dtype. Host tensors crossing to or from a CUDA device go through the pinned staging chunks
    (`staged_copy(sources, dtypes)`: `staging.to_device` or `to_host`), all at once: either all
    of them get their copy or none does (where the staging memory is refused, `Tensor.to` one
    by one instead). The rest, and anything the staging cannot take, use `Tensor.to` (a no-op
    where nothing changes). A tensor listed twice is copied once. Any other error (a CUDA
    error, the device full) is raised as it is."""
    staged, seen = [], set()
    for tensor, device, dtype in moves:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if staging.worth_staging(tensor.data, device):
            staged.append((tensor, device, dtype))
        else:
            tensor.data = tensor.data.to(device=device, dtype=dtype)
    if not staged:
        return
    try:
        copies = staged_copy([t.data for t, _, _ in staged], [dtype for _, _, dtype in staged])
    except staging.StagingRefused:  # no pinned staging memory: plain copies, one by one
        copies = [t.data.to(device=device, dtype=dtype) for t, device, dtype in staged]
    for (tensor, _, _), copy in zip(staged, copies):
        tensor.data = copy


def _dequantize(state, tensor, device, compute, kind: str) -> None:
    state.moved.append((tensor, tensor.device, tensor.dtype, kind))
    state.dequantized.append((tensor, tensor.data))
    tensor.data = quantized.host_dequantized(tensor, compute).to(device)


def _pack_streamed(state, layouts, pinned, on_disk, device) -> None:
    """RAM-tier blocks into host packs; disk-tier blocks into the pack file (its mapping)."""
    disk_layouts = [layout for layout, d in zip(layouts, on_disk) if d]
    if disk_layouts:
        state.pack_file = disk_tier.PackFile(disk_layouts)
    k = 0
    for layout, pin, d in zip(layouts, pinned, on_disk):
        if d:
            buffers, host_views = None, state.pack_file.write(k, layout)
            packing.bind(layout, host_views)
            k += 1
        else:
            buffers, host_views = packing.pack_host(layout, pin, device)
        state.layouts.append(layout)
        state.host_buffers.append(buffers)
        state.host_views.append(host_views)
        state.pinned.append(pin)


def _hook_streamed(state, modules) -> None:
    ring = state.ring
    for j, module in enumerate(modules):

        def before(module, args, j=j):
            ring.before(j)

        def after(module, args, output, j=j):
            ring.after(j)

        state.hooks.append(module.register_forward_pre_hook(torch.compiler.disable(before)))
        state.hooks.append(
            module.register_forward_hook(torch.compiler.disable(after), always_call=True)
        )
