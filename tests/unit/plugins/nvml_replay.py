# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A stand-in for the pynvml module that answers from a captured NVML session.

It returns the binding's own ctypes structures and raises the binding's own NVMLError
subclasses, so the probe meets the shapes it meets on a real host. Constants and error
classes not defined here come from the installed pynvml.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pynvml

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nvml"


def load_capture(name: str) -> Dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


class _Handle:
    def __init__(self, index: int):
        self.index = index


class NvmlReplay:
    """Replays ``capture["nvml"]``. ``strings_as_bytes`` imitates bindings older than 11.515."""

    def __init__(self, capture: Dict[str, Any], strings_as_bytes: bool = False):
        self.nvml = capture["nvml"]
        self.strings_as_bytes = strings_as_bytes
        self.calls: List[str] = []
        self.initialized = False

    def __getattr__(self, name: str) -> Any:
        # Constants, ctypes structures and NVMLError classes are the real binding's.
        if name.startswith(("NVML", "c_nvml", "nvmlPciInfo")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    def _answer(self, value: Any) -> Any:
        if isinstance(value, dict) and "nvml_error" in value:
            raise pynvml.NVMLError(getattr(pynvml, "NVML_ERROR_" + value["nvml_error"]))
        return value

    def _text(self, value: str) -> Any:
        return value.encode() if self.strings_as_bytes else value

    def _device(self, handle: _Handle) -> Dict[str, Any]:
        if not self.initialized:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        return self.nvml["devices"][handle.index]

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if "init_error" in self.nvml:
            raise pynvml.NVMLError(getattr(pynvml, "NVML_ERROR_" + self.nvml["init_error"]))
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.calls.append("nvmlShutdown")
        self.initialized = False

    def nvmlSystemGetDriverVersion(self) -> Any:
        return self._text(self._answer(self.nvml["driver_version"]))

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return self._answer(self.nvml["cuda_driver_version"])

    def nvmlDeviceGetCount(self) -> int:
        return len(self.nvml["devices"])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        if not 0 <= index < len(self.nvml["devices"]):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(index)

    def nvmlDeviceGetName(self, handle: _Handle) -> Any:
        return self._text(self._device(handle)["name"])

    def nvmlDeviceGetUUID(self, handle: _Handle) -> Any:
        return self._text(self._device(handle)["uuid"])

    def nvmlDeviceGetPciInfo(self, handle: _Handle) -> Any:
        return _pci_info(self._device(handle)["pci_bus_id"])

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> Any:
        memory = self._answer(self._device(handle)["memory"])
        return pynvml.c_nvmlMemory_t(total=memory["total"], free=memory["free"], used=memory["used"])

    def nvmlDeviceGetCudaComputeCapability(self, handle: _Handle) -> Any:
        return tuple(self._answer(self._device(handle)["cuda_compute_capability"]))

    def nvmlDeviceGetMigMode(self, handle: _Handle) -> Any:
        return list(self._answer(self._device(handle)["mig_mode"]))

    def nvmlDeviceGetPersistenceMode(self, handle: _Handle) -> int:
        return self._answer(self._device(handle)["persistence_mode"])

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        rates = self._answer(self._device(handle)["utilization"])
        return pynvml.c_nvmlUtilization_t(gpu=rates["gpu"], memory=rates["memory"])

    def nvmlDeviceGetGpuFabricInfo(self, handle: _Handle, reference: Any) -> int:
        info = self._answer(self._device(handle)["fabric_info"])
        reference._obj.state = info["state"]
        reference._obj.status = info["status"]
        return pynvml.NVML_SUCCESS

    def _link(self, handle: _Handle, link: int, key: str) -> Any:
        device = self._device(handle)
        values = device[key]
        if link >= len(values):
            return self._answer(device["nvlink_state_past_last_link"])
        return self._answer(values[link])

    def nvmlDeviceGetNvLinkState(self, handle: _Handle, link: int) -> int:
        return self._link(handle, link, "nvlink_state")

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, handle: _Handle, link: int) -> int:
        return self._link(handle, link, "nvlink_remote_device_type")

    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle: _Handle, link: int) -> Any:
        return _pci_info(self._link(handle, link, "nvlink_remote_pci_bus_id"))

    def nvmlDeviceGetTopologyCommonAncestor(self, first: _Handle, second: _Handle) -> int:
        self._device(first)
        return self._answer(self.nvml["topology_common_ancestor"][first.index][second.index])


def _pci_info(bus_id: str) -> Any:
    info = pynvml.nvmlPciInfo_t()
    info.busId = bus_id.encode()
    domain, bus, device_function = bus_id.split(":")
    info.domain = int(domain, 16)
    info.bus = int(bus, 16)
    info.device = int(device_function.split(".")[0], 16)
    return info
