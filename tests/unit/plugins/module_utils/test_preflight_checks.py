# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Preflight over facts the probes really produce from the captured hosts."""

from __future__ import annotations

import copy
import json

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._fabric_probe import probe_fabric
from ansible_collections.llmserve.cluster.plugins.module_utils._gpu_probe import probe_gpus
from ansible_collections.llmserve.cluster.plugins.module_utils._preflight_checks import run_preflight


@pytest.fixture
def fabric(host_tree):
    """llmserve_fabric as fabric_facts computes it on a captured host."""

    def probe(case, **options):
        root = host_tree(case)
        ip_addresses = json.loads((root / "ip_addr.json").read_text())
        return probe_fabric(ip_addresses, str(root / "sys"), str(root / "proc"), str(root / "dev"), **options)

    return probe


@pytest.fixture
def gpu(nvml_replay):
    """llmserve_gpu as gpu_facts computes it from a captured NVML session."""

    def probe(capture, fabric_manager_version="550.54.15", fabric_manager_active=True):
        facts = probe_gpus(nvml_replay(capture))
        if facts["nvswitch_present"]:
            # What gpu_facts adds from systemctl and nv-fabricmanager on NVSwitch hosts.
            facts.update(fabric_manager_active=fabric_manager_active, fabric_manager_version=fabric_manager_version)
        return facts

    return probe


def moved(fabric_facts, address):
    """The same node type at another address on the same network."""
    facts = copy.deepcopy(fabric_facts)
    facts["cluster_address"] = address
    facts["recommended_env"]["VLLM_HOST_IP"] = address
    return facts


@pytest.fixture
def h100_pair(fabric, gpu):
    """Two HGX H100 nodes with eight NDR ports each, on one management network."""
    node1 = fabric("ib_8x_one_down")
    return {
        "node1": {"gpu": gpu("h100_sxm_8x.json"), "fabric": node1},
        "node2": {"gpu": gpu("h100_sxm_8x.json"), "fabric": moved(node1, "10.20.0.12")},
    }


def test_two_matching_h100_nodes_pass(h100_pair):
    report = run_preflight(h100_pair)

    assert report == {"failed": False, "errors": [], "warnings": [], "hosts": ["node1", "node2"]}


def test_nodes_on_different_subnets_fail_with_both_networks_named(fabric, gpu):
    hosts = {
        "node1": {"gpu": gpu("a10_1x.json"), "fabric": fabric("ethernet_plain")},
        "node2": {"gpu": gpu("a10_1x.json"), "fabric": fabric("docker_two_private")},
    }

    report = run_preflight(hosts)

    assert report["failed"] is True
    (error,) = report["errors"]
    assert error.startswith("[cluster_network]")
    assert "10.1.2.0/24: node2; 10.10.1.0/24: node1" in error
    assert "llmserve_cluster_network" in error


def test_choosing_the_shared_network_makes_them_agree(fabric, gpu):
    node2 = fabric("docker_two_private", cluster_network="192.168.100.0/24")
    hosts = {
        "node1": {"gpu": gpu("a10_1x.json"), "fabric": moved(node2, "192.168.100.22")},
        "node2": {"gpu": gpu("a10_1x.json"), "fabric": node2},
    }

    assert run_preflight(hosts)["errors"] == []


def test_a_shared_vllm_host_ip_is_an_error(fabric, gpu):
    node1 = fabric("ethernet_plain")
    hosts = {
        "node1": {"gpu": gpu("a10_1x.json"), "fabric": node1},
        "node2": {"gpu": gpu("a10_1x.json"), "fabric": copy.deepcopy(node1)},
    }

    (error,) = run_preflight(hosts)["errors"]

    assert error.startswith("[vllm_host_ip] hosts node1, node2 share VLLM_HOST_IP 10.10.1.21")


def test_a_cluster_interface_that_is_down_is_an_error(fabric, gpu):
    down = fabric("ethernet_plain", cluster_interface="eno2")
    hosts = {
        "node1": {"gpu": gpu("a10_1x.json"), "fabric": fabric("ethernet_plain")},
        "node2": {"gpu": gpu("a10_1x.json"), "fabric": down},
    }

    errors = run_preflight(hosts)["errors"]

    assert any(e.startswith("[interface_up]") and "node2 (eno2)" in e for e in errors)
    assert any(e.startswith("[cluster_network] hosts node2: llmserve_fabric.cluster_address is empty") for e in errors)


def test_mixed_gpu_models_warn_by_default_and_explain_what_vllm_does(h100_pair, gpu):
    hosts = h100_pair
    hosts["node2"]["gpu"] = gpu("a10_1x.json")

    report = run_preflight(hosts)

    assert report["failed"] is False
    (warning,) = report["warnings"]
    assert "node1: 8 x NVIDIA H100 80GB HBM3; node2: 1 x NVIDIA A10" in warning
    assert "one tensor_parallel_size on every node" in warning
    assert "least memory" in warning


def test_mixed_gpu_counts_fail_when_asked_to(h100_pair):
    hosts = h100_pair
    hosts["node2"]["gpu"]["gpus"] = hosts["node2"]["gpu"]["gpus"][:4]

    report = run_preflight(hosts, heterogeneous_gpus="error")

    assert report["failed"] is True
    assert report["errors"][0].startswith("[heterogeneous_gpus]")
    assert "node2: 4 x NVIDIA H100 80GB HBM3" in report["errors"][0]


def test_a_node_without_gpus_names_the_reason(h100_pair, gpu):
    hosts = h100_pair
    hosts["node2"]["gpu"] = gpu("no_library.json")

    errors = run_preflight(hosts)["errors"]

    assert errors[0].startswith("[gpus] host node2: llmserve_gpu.available is false (NVML library")


def test_driver_535_is_too_old_for_a_cuda_13_build(fabric, gpu):
    hosts = {
        "node1": {"gpu": gpu("a10_1x.json"), "fabric": fabric("ethernet_plain")},
    }

    assert run_preflight(hosts, vllm_cuda_major=12)["errors"] == []
    (error,) = run_preflight(hosts, vllm_cuda_major=13)["errors"]
    assert "CUDA 13.x build of vLLM (needs >= 580) on node1 (535.129.03)" in error


def test_driver_older_than_525_fails_for_cuda_12(fabric, gpu):
    facts = gpu("a10_1x.json")
    facts["driver_version"] = "470.223.02"

    (error,) = run_preflight({"node1": {"gpu": facts, "fabric": fabric("ethernet_plain")}})["errors"]

    assert "needs >= 525" in error
    assert "470.223.02" in error


def test_nvswitch_node_without_fabric_manager_fails_with_error_802_explained(h100_pair):
    hosts = h100_pair
    hosts["node2"]["gpu"].update(fabric_manager_active=False, fabric_manager_version="550.54.15")
    for device in hosts["node2"]["gpu"]["gpus"]:
        device["fabric_state"] = "in_progress"

    (error,) = run_preflight(hosts)["errors"]

    assert error.startswith("[fabric_manager] host node2 has NVSwitches but nvidia-fabricmanager is not active")
    assert "NVLink fabric state in_progress" in error
    assert "error 802" in error


def test_fabric_manager_at_another_version_than_the_driver_fails(h100_pair):
    hosts = h100_pair
    hosts["node1"]["gpu"]["fabric_manager_version"] = "550.90.07"

    (error,) = run_preflight(hosts)["errors"]

    assert "fabric manager version 550.90.07 differs from driver 550.54.15" in error


def test_registered_fabric_without_local_fabric_manager_only_warns(h100_pair):
    hosts = h100_pair
    hosts["node1"]["gpu"].update(fabric_manager_active=False, fabric_manager_version=None)

    report = run_preflight(hosts)

    assert report["errors"] == []
    assert report["warnings"][0].startswith("[fabric_manager] host node1 has NVSwitches and no local")


def test_active_rdma_without_nvidia_peermem_warns_that_gpudirect_rdma_is_off(fabric, gpu):
    node1 = fabric("roce_connectx6")
    hosts = {
        "node1": {"gpu": gpu("a10_1x.json"), "fabric": node1},
        "node2": {"gpu": gpu("a10_1x.json"), "fabric": moved(node1, "10.30.4.61")},
    }

    report = run_preflight(hosts)

    assert report["failed"] is False
    (warning,) = report["warnings"]
    assert warning.startswith("[gpudirect_rdma] hosts node1, node2 have active RDMA ports but nvidia_peermem")
    assert "GPUDirect RDMA is off" in warning


def test_rdma_without_device_nodes_warns(h100_pair):
    hosts = h100_pair
    hosts["node1"]["fabric"]["dev_infiniband_present"] = False

    (warning,) = run_preflight(hosts)["warnings"]

    assert warning.startswith("[rdma_devices] hosts node1")


def test_missing_facts_are_named():
    hosts = {"node1": {"gpu": None, "fabric": None}}

    errors = run_preflight(hosts)["errors"]

    assert errors[0].startswith("[facts] hosts node1: ansible_facts.llmserve_fabric is missing")
    assert errors[1].startswith("[facts] hosts node1: ansible_facts.llmserve_gpu is missing")


def test_cpu_only_cluster_can_skip_the_gpu_checks(fabric, gpu):
    node1 = fabric("ethernet_plain")
    hosts = {
        "node1": {"gpu": gpu("no_library.json"), "fabric": node1},
        "node2": {"gpu": None, "fabric": moved(node1, "10.10.1.22")},
    }

    assert run_preflight(hosts, require_gpus=False)["errors"] == []
    assert run_preflight(hosts)["failed"] is True


def test_unknown_policy_is_refused(h100_pair):
    with pytest.raises(ValueError, match="heterogeneous_gpus"):
        run_preflight(h100_pair, heterogeneous_gpus="ignore")
