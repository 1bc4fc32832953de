# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import pynvml
import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._gpu_probe import (
    format_cuda_version,
    parse_fabric_manager_version,
    parse_systemctl_is_active,
    pci_address,
    probe_gpus,
)

H100_BUS_IDS = [f"00000000:{bus}:00.0" for bus in ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")]


def test_h100_sxm_board_reports_every_gpu_as_nvml_does(nvml_replay):
    replay = nvml_replay("h100_sxm_8x.json")
    facts = probe_gpus(replay)

    assert facts["available"] is True
    assert facts["reason"] is None
    assert facts["driver_version"] == "550.54.15"
    assert facts["cuda_driver_version"] == "12.4"
    assert facts["gpu_count"] == 8
    assert [gpu["pci_bus_id"] for gpu in facts["gpus"]] == H100_BUS_IDS
    first = facts["gpus"][0]
    assert first == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": "GPU-c7a0294c-c2c2-5476-438c-fb468eaa223b",
        "pci_bus_id": "00000000:18:00.0",
        "pci_address": "0000:18:00.0",
        "memory_total_mib": 81559,
        "memory_free_mib": 81007,
        "memory_used_mib": 551,
        "compute_capability": "9.0",
        "mig_mode": "disabled",
        "persistence_mode": False,
        "utilization_gpu_percent": 0,
        "nvlink_active_links": 18,
        "fabric_state": "completed",
    }
    assert facts["gpus"][5]["pci_address"] == "0000:ab:00.0"
    assert replay.calls == ["nvmlInit", "nvmlShutdown"]


def test_h100_sxm_board_is_all_nvswitch_with_pcie_split_by_socket(nvml_replay):
    facts = probe_gpus(nvml_replay("h100_sxm_8x.json"))

    assert facts["nvlink_present"] is True
    assert facts["nvswitch_present"] is True
    topology = facts["topology"]
    assert topology["all_pairs_nvlink"] is True
    # `nvidia-smi topo -m` on these boards prints NV18 for every pair.
    for a, row in enumerate(topology["matrix"]):
        assert row == ["X" if a == b else "NV18" for b in range(8)]
    assert topology["pcie"][0][1:4] == ["NODE", "NODE", "NODE"]
    assert topology["pcie"][0][4:] == ["SYS"] * 4
    assert topology["pcie"][7][4] == "NODE"


def test_a10_from_an_older_binding_decodes_bytes_and_tolerates_unsupported_features(nvml_replay):
    facts = probe_gpus(nvml_replay("a10_1x.json", strings_as_bytes=True))

    assert facts["available"] is True
    assert facts["driver_version"] == "535.129.03"
    assert facts["cuda_driver_version"] == "12.2"
    (gpu,) = facts["gpus"]
    assert gpu["name"] == "NVIDIA A10"
    assert gpu["uuid"] == "GPU-b1ff00c5-3253-827e-131a-a988b71d5e7b"
    assert gpu["pci_address"] == "0000:08:00.0"
    assert (gpu["memory_total_mib"], gpu["memory_free_mib"], gpu["memory_used_mib"]) == (23028, 22511, 516)
    assert gpu["compute_capability"] == "8.6"
    # NVML answers NotSupported for MIG, NVLink and the fabric on an A10.
    assert gpu["mig_mode"] is None
    assert gpu["fabric_state"] is None
    assert gpu["nvlink_active_links"] == 0
    assert gpu["persistence_mode"] is True
    assert facts["nvlink_present"] is False
    assert facts["nvswitch_present"] is False
    assert facts["topology"] == {"matrix": [["X"]], "pcie": [["X"]], "all_pairs_nvlink": False}


def test_host_without_the_nvidia_library_gets_a_reason_not_a_crash(nvml_replay):
    replay = nvml_replay("no_library.json")
    facts = probe_gpus(replay)

    assert facts["available"] is False
    assert "libnvidia-ml.so.1" in facts["reason"]
    assert "NVML Shared Library Not Found" in facts["reason"]
    assert facts["gpus"] == []
    assert facts["gpu_count"] == 0
    assert replay.calls == ["nvmlInit"]


def test_driver_loaded_without_any_gpu_keeps_the_driver_version(nvml_replay):
    replay = nvml_replay("driver_no_gpus.json")
    facts = probe_gpus(replay)

    assert facts["available"] is False
    assert facts["reason"] == "the NVIDIA driver is loaded but NVML sees no GPU"
    assert facts["driver_version"] == "550.54.15"
    assert facts["gpus"] == []
    assert replay.calls == ["nvmlInit", "nvmlShutdown"]


def test_missing_pynvml_module_is_a_reason():
    facts = probe_gpus(None)

    assert facts["available"] is False
    assert "nvidia-ml-py" in facts["reason"]


def test_driver_not_loaded_is_named(nvml_replay):
    capture = {"nvml": {"init_error": "DRIVER_NOT_LOADED"}}

    facts = probe_gpus(nvml_replay(capture))

    assert facts["reason"].startswith("the NVIDIA kernel driver is not loaded")


def test_one_failing_query_only_blanks_its_own_field(nvml_replay, nvml_capture):
    capture = nvml_capture("h100_sxm_8x.json")
    capture["nvml"]["devices"][3]["memory"] = {"nvml_error": "NO_PERMISSION"}
    capture["nvml"]["devices"][3]["utilization"] = {"nvml_error": "GPU_IS_LOST"}

    facts = probe_gpus(nvml_replay(capture))

    broken = facts["gpus"][3]
    assert (broken["memory_total_mib"], broken["memory_free_mib"], broken["memory_used_mib"]) == (None, None, None)
    assert broken["utilization_gpu_percent"] is None
    assert broken["name"] == "NVIDIA H100 80GB HBM3"
    assert facts["gpus"][4]["memory_total_mib"] == 81559


def test_mig_enabled_and_fabric_not_registered_are_reported(nvml_replay, nvml_capture):
    capture = nvml_capture("h100_sxm_8x.json")
    capture["nvml"]["devices"][0]["mig_mode"] = [1, 1]
    # Without fabric manager the GPUs stay "In Progress" and CUDA fails with error 802.
    capture["nvml"]["devices"][1]["fabric_info"] = {"state": 2, "status": 0}
    capture["nvml"]["devices"][2]["fabric_info"] = {"state": 3, "status": pynvml.NVML_ERROR_UNKNOWN}

    gpus = probe_gpus(nvml_replay(capture))["gpus"]

    assert gpus[0]["mig_mode"] == "enabled"
    assert gpus[1]["fabric_state"] == "in_progress"
    assert gpus[2]["fabric_state"] == "failed"


def _nvlink_pair(capture, remote_type, remote_bus_ids):
    """Two H100 boards joined GPU-to-GPU by 12 NVLinks (no switch), as on an H100 NVL pair."""
    nvml = capture["nvml"]
    nvml["devices"] = nvml["devices"][:2]
    nvml["topology_common_ancestor"] = [[None, 50], [50, None]]
    for index, device in enumerate(nvml["devices"]):
        device["nvlink_state"] = [1] * 12
        device["nvlink_remote_device_type"] = [remote_type] * 12
        device["nvlink_remote_pci_bus_id"] = [remote_bus_ids[1 - index]] * 12
    return capture


def test_direct_gpu_to_gpu_nvlinks_are_counted_per_pair(nvml_replay, nvml_capture):
    capture = _nvlink_pair(nvml_capture("h100_sxm_8x.json"), 0, H100_BUS_IDS[:2])

    facts = probe_gpus(nvml_replay(capture))

    assert facts["nvlink_present"] is True
    assert facts["nvswitch_present"] is False
    assert facts["topology"]["matrix"] == [["X", "NV12"], ["NV12", "X"]]
    assert facts["topology"]["pcie"] == [["X", "SYS"], ["SYS", "X"]]
    assert facts["topology"]["all_pairs_nvlink"] is True


def test_links_nvml_cannot_name_count_as_hidden_nvswitches(nvml_replay, nvml_capture):
    # In VMs NVML often answers neither the remote type nor a local GPU's address.
    capture = _nvlink_pair(
        nvml_capture("h100_sxm_8x.json"), {"nvml_error": "NOT_SUPPORTED"}, ["00000000:00:00.0", "00000000:00:00.0"]
    )

    facts = probe_gpus(nvml_replay(capture))

    assert facts["nvswitch_present"] is True
    assert facts["topology"]["matrix"][0][1] == "NV12"


def test_gpus_without_nvlink_show_the_pcie_relation(nvml_replay, nvml_capture):
    capture = nvml_capture("h100_sxm_8x.json")
    for device in capture["nvml"]["devices"]:
        device["nvlink_state"] = []
        device["nvlink_state_past_last_link"] = {"nvml_error": "NOT_SUPPORTED"}

    facts = probe_gpus(nvml_replay(capture))

    assert facts["nvlink_present"] is False
    assert facts["topology"]["matrix"][0][:5] == ["X", "NODE", "NODE", "NODE", "SYS"]
    assert facts["topology"]["all_pairs_nvlink"] is False


@pytest.mark.parametrize(
    ("encoded", "text"), [(12040, "12.4"), (12020, "12.2"), (12080, "12.8"), (13000, "13.0"), (None, None)]
)
def test_cuda_driver_version_is_decoded_like_nvidia_smi(encoded, text):
    assert format_cuda_version(encoded) == text


def test_pci_bus_id_is_rewritten_the_sysfs_way():
    assert pci_address("00000000:DB:00.0") == "0000:db:00.0"
    assert pci_address("00000001:1A:00.0") == "0001:1a:00.0"
    assert pci_address(None) is None


def test_fabric_manager_version_is_read_from_its_banner():
    assert parse_fabric_manager_version("Fabric Manager version is : 550.54.15\n") == "550.54.15"
    assert parse_fabric_manager_version("\n\n\tFabric Manager version is : 535.161.08\n\n") == "535.161.08"
    assert parse_fabric_manager_version("nv-fabricmanager: command not found") is None


@pytest.mark.parametrize(
    ("rc", "output", "active"),
    [
        (0, "active\n", True),
        (3, "inactive\n", False),
        (3, "failed\n", False),
        (3, "activating\n", False),
        (4, "", False),
    ],
)
def test_systemctl_is_active_means_running(rc, output, active):
    assert parse_systemctl_is_active(rc, output) is active
