"""Facts about this machine and its device: GPU name and memory, PCIe link, versions, host RAM.

NVML (pynvml, from nvidia-ml-py) supplies the PCIe link and driver where it exists; torch
supplies the rest. On CPU, or where NVML is missing, the GPU fields fall back cleanly:
gpu_name "cpu", memory = host RAM, None for the link and the driver.
"""

from __future__ import annotations

import hashlib
import os
import socket

from profiler.types import MachineFacts
from runtime.errors import UserError


def parse_device(device: str):
    """A torch device for `device` ("cpu", "cuda", "cuda:1"); a UserError if it is not here."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device {device!r} is not a device name: use cpu or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise UserError(f"device {device!r} is not supported: use cpu or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"device {device!r} is not available (no CUDA here): use --device cpu")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise UserError(
            f"device {device!r} does not exist: this machine has cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", index)


def host_ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def fingerprint(hostname: str, gpu_name: str, gpu_identity: str | None) -> str:
    """Stable id of host + device: sha256 of hostname, GPU name and UUID (or bus id)."""
    text = "\n".join([hostname, gpu_name, gpu_identity or ""])
    return hashlib.sha256(text.encode()).hexdigest()


def machine_facts(device: str = "cpu") -> MachineFacts:
    """Facts about `device` on this machine."""
    import torch

    dev = parse_device(device)
    hostname = socket.gethostname()
    ram = host_ram_bytes()
    if dev.type == "cpu":
        return MachineFacts(
            fingerprint=fingerprint(hostname, "cpu", None),
            hostname=hostname,
            gpu_name="cpu",
            gpu_memory_bytes=ram,
            pcie_gen=None,
            pcie_width=None,
            pcie_gen_max=None,
            pcie_width_max=None,
            driver=None,
            cuda=None,
            torch=torch.__version__,
            host_ram_bytes=ram,
        )
    props = torch.cuda.get_device_properties(dev)
    uuid = str(getattr(props, "uuid", "") or "") or None
    nvml = _nvml_facts(uuid, dev.index)
    identity = uuid or nvml.get("bus_id")
    return MachineFacts(
        fingerprint=fingerprint(hostname, props.name, identity),
        hostname=hostname,
        gpu_name=props.name,
        gpu_memory_bytes=int(props.total_memory),
        pcie_gen=nvml.get("pcie_gen"),
        pcie_width=nvml.get("pcie_width"),
        pcie_gen_max=nvml.get("pcie_gen_max"),
        pcie_width_max=nvml.get("pcie_width_max"),
        driver=nvml.get("driver"),
        cuda=torch.version.cuda,
        torch=torch.__version__,
        host_ram_bytes=ram,
    )


def free_memory_bytes(device: str) -> int:
    """Memory free on `device` now (host RAM available on CPU)."""
    import torch

    dev = parse_device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _nvml_facts(uuid: str | None, index: int) -> dict:
    """PCIe link, driver and bus id from NVML; an empty dict where NVML is not usable."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    try:
        handle = _nvml_handle(pynvml, uuid, index)
        facts = {"driver": _text(pynvml.nvmlSystemGetDriverVersion())}
        queries = {
            "pcie_gen": pynvml.nvmlDeviceGetCurrPcieLinkGeneration,
            "pcie_width": pynvml.nvmlDeviceGetCurrPcieLinkWidth,
            "pcie_gen_max": pynvml.nvmlDeviceGetMaxPcieLinkGeneration,
            "pcie_width_max": pynvml.nvmlDeviceGetMaxPcieLinkWidth,
        }
        for key, query in queries.items():
            try:
                facts[key] = int(query(handle))
            except pynvml.NVMLError:
                facts[key] = None
        try:
            facts["bus_id"] = _text(pynvml.nvmlDeviceGetPciInfo(handle).busId)
        except pynvml.NVMLError:
            pass
        return facts
    except pynvml.NVMLError:
        return {}
    finally:
        pynvml.nvmlShutdown()


def _nvml_handle(pynvml, uuid: str | None, index: int):
    # NVML numbers devices by PCI order, CUDA by speed unless CUDA_DEVICE_ORDER says otherwise:
    # the UUID is the reliable join, the index the fallback.
    if uuid:
        for candidate in (uuid, f"GPU-{uuid}"):
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(candidate)
            except pynvml.NVMLError:
                continue
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
