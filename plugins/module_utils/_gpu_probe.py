# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Read a host's NVIDIA GPUs through NVML and describe them as the ``llmserve_gpu`` fact.

The NVML binding (the ``pynvml`` module shipped by the nvidia-ml-py package) is passed in
as a parameter, so tests can hand over a replay of captured NVML answers instead.
Every per-device query is allowed to fail: NVML answers NVMLError_NotSupported for
features a GPU lacks (NVLink on an A10, MIG on an L4), and older bindings lack newer
functions. Such a field becomes null instead of failing the probe.
"""

from __future__ import annotations

import ctypes
import re
from typing import Any, Dict, List, Optional, Tuple

MIB = 1024 * 1024

# nvmlGpuTopologyLevel_t values, named the way `nvidia-smi topo -m` prints them.
TOPOLOGY_LABELS = {
    0: "BOARD",  # NVML_TOPOLOGY_INTERNAL: two GPUs on one board
    10: "PIX",  # NVML_TOPOLOGY_SINGLE
    20: "PXB",  # NVML_TOPOLOGY_MULTIPLE
    30: "PHB",  # NVML_TOPOLOGY_HOSTBRIDGE
    40: "NODE",  # NVML_TOPOLOGY_NODE
    50: "SYS",  # NVML_TOPOLOGY_SYSTEM
}

# nvmlGpuFabricState_t values.
FABRIC_STATES = {0: "not_supported", 1: "not_started", 2: "in_progress", 3: "completed"}

# Bindings older than the NVLink 4 era (H100) defined 12 or 18 links; use theirs when present.
DEFAULT_NVLINK_MAX_LINKS = 18
NVLINK_DEVICE_TYPE_SWITCH = 2


def empty_facts(reason: str, driver_version: Optional[str] = None, cuda_driver_version: Optional[str] = None):
    """The fact for a host where no GPU can be used, with the reason why."""
    return {
        "available": False,
        "reason": reason,
        "driver_version": driver_version,
        "cuda_driver_version": cuda_driver_version,
        "gpu_count": 0,
        "gpus": [],
        "nvlink_present": False,
        "nvswitch_present": False,
        "topology": {"matrix": [], "pcie": [], "all_pairs_nvlink": False},
        "fabric_manager_active": None,
        "fabric_manager_version": None,
    }


def decode_text(value: Any) -> Optional[str]:
    """NVML strings arrive as bytes from older bindings and from ctypes char arrays."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).rstrip("\x00").strip()


def format_cuda_version(version: Optional[int]) -> Optional[str]:
    """NVML encodes CUDA 12.4 as 12040 (major * 1000 + minor * 10)."""
    if version is None:
        return None
    return f"{version // 1000}.{(version % 1000) // 10}"


def pci_address(bus_id: Optional[str]) -> Optional[str]:
    """NVML's "00000000:18:00.0" written the way sysfs names the device: "0000:18:00.0"."""
    if not bus_id:
        return None
    domain, _sep, rest = bus_id.lower().partition(":")
    if not rest:
        return bus_id.lower()
    try:
        return f"{int(domain, 16):04x}:{rest}"
    except ValueError:
        return bus_id.lower()


class _Nvml:
    """Calls into an NVML binding, turning each NVMLError into None."""

    def __init__(self, nvml: Any):
        self.module = nvml
        self.error_class = getattr(nvml, "NVMLError", Exception)

    def const(self, name: str, default: int) -> int:
        return getattr(self.module, name, default)

    def call(self, function_name: str, *args: Any) -> Any:
        function = getattr(self.module, function_name, None)
        if function is None:
            return None
        try:
            return function(*args)
        except self.error_class:
            return None


def _memory(nvml: _Nvml, handle: Any) -> Tuple[Optional[int], Optional[int], Optional[int]]:
    info = nvml.call("nvmlDeviceGetMemoryInfo", handle)
    if info is None:
        return None, None, None
    return info.total // MIB, info.free // MIB, info.used // MIB


def _mig_mode(nvml: _Nvml, handle: Any) -> Optional[str]:
    modes = nvml.call("nvmlDeviceGetMigMode", handle)
    if not modes:
        return None
    return "enabled" if modes[0] == nvml.const("NVML_DEVICE_MIG_ENABLE", 1) else "disabled"


def _fabric_state(nvml: _Nvml, handle: Any) -> Optional[str]:
    """Hopper and later report whether the GPU finished registering with the NVLink fabric."""
    struct_class = getattr(nvml.module, "c_nvmlGpuFabricInfo_t", None)
    if struct_class is None:
        return None
    info = struct_class()
    if nvml.call("nvmlDeviceGetGpuFabricInfo", handle, ctypes.byref(info)) is None:
        return None
    state = FABRIC_STATES.get(info.state, "unknown")
    # NVML documents status as meaningful only once the state is "completed".
    if state == "completed" and info.status != 0:
        return "failed"
    return state


def _nvlinks(nvml: _Nvml, handle: Any) -> List[Dict[str, Any]]:
    """Active NVLinks of one GPU with what sits at the far end of each."""
    links = []
    enabled = nvml.const("NVML_FEATURE_ENABLED", 1)
    switch_type = nvml.const("NVML_NVLINK_DEVICE_TYPE_SWITCH", NVLINK_DEVICE_TYPE_SWITCH)
    for link in range(nvml.const("NVML_NVLINK_MAX_LINKS", DEFAULT_NVLINK_MAX_LINKS)):
        # Links past the GPU's own count answer InvalidArgument; GPUs without NVLink NotSupported.
        if nvml.call("nvmlDeviceGetNvLinkState", handle, link) != enabled:
            continue
        remote_type = nvml.call("nvmlDeviceGetNvLinkRemoteDeviceType", handle, link)
        remote_address = None
        if remote_type != switch_type:
            remote_pci = nvml.call("nvmlDeviceGetNvLinkRemotePciInfo", handle, link)
            remote_address = pci_address(decode_text(remote_pci.busId)) if remote_pci is not None else None
        links.append(
            {
                "link": link,
                "remote_type": remote_type,
                "to_switch": remote_type == switch_type,
                "remote_pci_address": remote_address,
            }
        )
    return links


def _mark_hidden_switches(links: List[List[Dict[str, Any]]], local_addresses: set) -> None:
    """Like NCCL: a link NVML cannot type, and whose far end is no local GPU, ends in an NVSwitch.

    Virtual machines often hide the switches, so NVML answers neither the type nor the far end.
    """
    for gpu_links in links:
        for link in gpu_links:
            if link["remote_type"] is None and link["remote_pci_address"] not in local_addresses:
                link["to_switch"] = True


def _describe_gpu(nvml: _Nvml, index: int, handle: Any) -> Dict[str, Any]:
    pci = nvml.call("nvmlDeviceGetPciInfo", handle)
    bus_id = decode_text(pci.busId) if pci is not None else None
    total, free, used = _memory(nvml, handle)
    capability = nvml.call("nvmlDeviceGetCudaComputeCapability", handle)
    persistence = nvml.call("nvmlDeviceGetPersistenceMode", handle)
    utilization = nvml.call("nvmlDeviceGetUtilizationRates", handle)
    return {
        "index": index,
        "name": decode_text(nvml.call("nvmlDeviceGetName", handle)),
        "uuid": decode_text(nvml.call("nvmlDeviceGetUUID", handle)),
        "pci_bus_id": bus_id,
        "pci_address": pci_address(bus_id),
        "memory_total_mib": total,
        "memory_free_mib": free,
        "memory_used_mib": used,
        "compute_capability": f"{capability[0]}.{capability[1]}" if capability else None,
        "mig_mode": _mig_mode(nvml, handle),
        "persistence_mode": None if persistence is None else persistence == nvml.const("NVML_FEATURE_ENABLED", 1),
        "utilization_gpu_percent": None if utilization is None else utilization.gpu,
        "nvlink_active_links": 0,
        "fabric_state": _fabric_state(nvml, handle),
    }


def _topology(nvml: _Nvml, handles: List[Any], gpus: List[Dict[str, Any]], links: List[List[Dict[str, Any]]]):
    """GPU-to-GPU matrix in the words of `nvidia-smi topo -m`: NV<links> where NVLink joins a pair."""
    switch_links = [sum(1 for link in gpu_links if link["to_switch"]) for gpu_links in links]
    count = len(handles)
    matrix: List[List[Optional[str]]] = []
    pcie: List[List[Optional[str]]] = []
    all_pairs_nvlink = count > 1
    for a in range(count):
        matrix_row: List[Optional[str]] = []
        pcie_row: List[Optional[str]] = []
        for b in range(count):
            if a == b:
                matrix_row.append("X")
                pcie_row.append("X")
                continue
            level = nvml.call("nvmlDeviceGetTopologyCommonAncestor", handles[a], handles[b])
            pcie_label = None if level is None else TOPOLOGY_LABELS.get(level, str(level))
            direct = sum(
                1 for link in links[a] if not link["to_switch"] and link["remote_pci_address"] == gpus[b]["pci_address"]
            )
            # Through NVSwitches a pair gets the narrower of the two GPUs' switch-facing links.
            bonded = direct + min(switch_links[a], switch_links[b])
            if not bonded:
                all_pairs_nvlink = False
            matrix_row.append(f"NV{bonded}" if bonded else pcie_label)
            pcie_row.append(pcie_label)
        matrix.append(matrix_row)
        pcie.append(pcie_row)
    return {"matrix": matrix, "pcie": pcie, "all_pairs_nvlink": all_pairs_nvlink}


def _init_failure_reason(nvml: Any, error: Exception) -> str:
    if isinstance(error, getattr(nvml, "NVMLError_LibraryNotFound", ())):
        return f"NVML library (libnvidia-ml.so.1) not found: the NVIDIA driver is not installed ({error})"
    if isinstance(error, getattr(nvml, "NVMLError_DriverNotLoaded", ())):
        return f"the NVIDIA kernel driver is not loaded ({error})"
    if isinstance(error, getattr(nvml, "NVMLError_LibRmVersionMismatch", ())):
        return f"NVML and the loaded kernel driver differ in version, reboot or reload the driver ({error})"
    return f"NVML could not start: {error}"


def probe_gpus(nvml: Any) -> Dict[str, Any]:
    """Describe every GPU NVML sees. ``nvml`` is the pynvml module, or None when it is missing."""
    if nvml is None:
        return empty_facts("the Python module pynvml (package nvidia-ml-py) is not installed for this interpreter")
    calls = _Nvml(nvml)
    try:
        nvml.nvmlInit()
    except calls.error_class as error:
        return empty_facts(_init_failure_reason(nvml, error))
    try:
        driver_version = decode_text(calls.call("nvmlSystemGetDriverVersion"))
        cuda_version = calls.call("nvmlSystemGetCudaDriverVersion_v2")
        if cuda_version is None:
            cuda_version = calls.call("nvmlSystemGetCudaDriverVersion")
        cuda_driver_version = format_cuda_version(cuda_version)
        count = calls.call("nvmlDeviceGetCount")
        if not count:
            return empty_facts("the NVIDIA driver is loaded but NVML sees no GPU", driver_version, cuda_driver_version)
        handles = []
        gpus = []
        links = []
        for index in range(count):
            handle = calls.call("nvmlDeviceGetHandleByIndex", index)
            if handle is None:
                continue  # a GPU that fell off the bus answers GpuIsLost; report the others
            gpu = _describe_gpu(calls, index, handle)
            gpu_links = _nvlinks(calls, handle)
            gpu["nvlink_active_links"] = len(gpu_links)
            handles.append(handle)
            gpus.append(gpu)
            links.append(gpu_links)
        if not gpus:
            return empty_facts(f"NVML counts {count} GPU(s) but none answers", driver_version, cuda_driver_version)
        _mark_hidden_switches(links, {gpu["pci_address"] for gpu in gpus})
        facts = empty_facts("", driver_version, cuda_driver_version)
        facts.update(
            {
                "available": True,
                "reason": None,
                "gpu_count": len(gpus),
                "gpus": gpus,
                "nvlink_present": any(links),
                "nvswitch_present": any(link["to_switch"] for gpu_links in links for link in gpu_links),
                "topology": _topology(calls, handles, gpus, links),
            }
        )
        return facts
    finally:
        calls.call("nvmlShutdown")


_FABRIC_MANAGER_VERSION = re.compile(r"Fabric Manager version is\s*:\s*(\S+)")


def parse_fabric_manager_version(output: str) -> Optional[str]:
    """`nv-fabricmanager --version` prints "Fabric Manager version is : 550.54.15"."""
    match = _FABRIC_MANAGER_VERSION.search(output or "")
    return match.group(1) if match else None


def parse_systemctl_is_active(rc: int, output: str) -> bool:
    """`systemctl is-active UNIT` exits 0 and prints "active" only for a running unit."""
    return rc == 0 and (output or "").strip().splitlines()[:1] == ["active"]
