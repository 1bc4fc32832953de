# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import json

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._fabric_probe import (
    FabricProbeError,
    is_ignored_interface,
    probe_fabric,
    read_default_route,
)


def probe_root(root, **options):
    ip_addresses = json.loads((root / "ip_addr.json").read_text())
    return probe_fabric(
        ip_addresses, sysfs_root=str(root / "sys"), proc_root=str(root / "proc"), dev_root=str(root / "dev"), **options
    )


@pytest.fixture
def probe(host_tree):
    """Probe a captured host as if it were this one."""

    def run(case, **options):
        return probe_root(host_tree(case), **options)

    return run


def test_plain_ethernet_host_gets_socket_settings_only(probe):
    facts = probe("ethernet_plain")

    assert facts["cluster_interface"] == "eno1"
    assert facts["cluster_interface_source"] == "default_route"
    assert facts["cluster_interface_up"] is True
    assert facts["cluster_address"] == "10.10.1.21"
    assert facts["cluster_network"] == "10.10.1.0/24"
    assert facts["default_gateway"] == "10.10.1.1"
    assert facts["ib_present"] is False
    assert facts["rdma_devices"] == []
    assert facts["dev_infiniband_present"] is False
    assert facts["nvidia_peermem_loaded"] is False
    assert facts["recommended_env"] == {
        "NCCL_SOCKET_IFNAME": "=eno1",
        "GLOO_SOCKET_IFNAME": "eno1",
        "VLLM_HOST_IP": "10.10.1.21",
    }
    eno2 = next(i for i in facts["interfaces"] if i["name"] == "eno2")
    assert eno2["up"] is False
    assert eno2["pci_address"] == "0000:03:00.1"
    assert eno2["numa_node"] == 0


def test_infiniband_node_lists_only_active_ports_in_nccl_ib_hca(probe):
    facts = probe("ib_8x_one_down")

    assert facts["ib_present"] is True
    assert facts["rdma_transport"] == "InfiniBand"
    assert facts["active_rdma_ports"] == [f"mlx5_{n}:1" for n in (0, 1, 2, 3, 4, 6, 7)]
    assert facts["recommended_env"]["NCCL_IB_HCA"] == "=mlx5_0:1,mlx5_1:1,mlx5_2:1,mlx5_3:1,mlx5_4:1,mlx5_6:1,mlx5_7:1"
    assert "NCCL_IB_GID_INDEX" not in facts["recommended_env"]
    assert facts["nvidia_peermem_loaded"] is True
    assert "uverbs7" in facts["dev_infiniband"]


def test_infiniband_ports_carry_state_rate_locality_and_ipoib_netdev(probe):
    devices = {device["name"]: device for device in probe("ib_8x_one_down")["rdma_devices"]}

    assert list(devices) == [f"mlx5_{n}" for n in range(8)]
    first = devices["mlx5_0"]
    assert (first["pci_address"], first["numa_node"], first["fw_ver"]) == ("0000:19:00.0", 0, "28.39.3004")
    (port,) = first["ports"]
    assert port["state"] == "ACTIVE"
    assert port["state_code"] == 4
    assert port["phys_state"] == "LinkUp"
    assert port["rate"] == "400 Gb/sec (4X NDR)"
    assert port["rate_gbps"] == 400
    assert port["transport"] == "InfiniBand"
    assert port["netdev"] == "ibp25s0"
    assert [gid["gid"] for gid in port["gids"]] == ["fe80:0000:0000:0000:a088:c203:0055:3e5e"]
    assert port["roce_v2_gid_index"] is None
    (down,) = devices["mlx5_5"]["ports"]
    assert (down["state"], down["phys_state"], down["rate_gbps"], down["active"]) == ("DOWN", "Polling", 10, False)
    assert devices["mlx5_5"]["numa_node"] == 1
    assert devices["mlx5_7"]["ports"][0]["netdev"] == "ibp218s0"


def test_roce_host_recommends_the_roce_v2_ipv4_gid_index(probe):
    facts = probe("roce_connectx6")

    assert facts["rdma_transport"] == "RoCE"
    assert facts["active_rdma_ports"] == ["mlx5_0:1"]  # mlx5_1 has no link
    assert facts["recommended_env"]["NCCL_IB_HCA"] == "=mlx5_0:1"
    assert facts["recommended_env"]["NCCL_IB_GID_INDEX"] == "5"
    port = facts["rdma_devices"][0]["ports"][0]
    assert port["link_layer"] == "Ethernet"
    assert port["netdev"] == "ens1f0"
    assert [(gid["index"], gid["type"], gid["ipv4"]) for gid in port["gids"]][4:] == [
        (4, "IB/RoCE v1", "172.19.0.60"),
        (5, "RoCE v2", "172.19.0.60"),
    ]
    assert facts["nvidia_peermem_loaded"] is False
    assert facts["dev_infiniband_present"] is True


def test_roce_host_with_the_roce_nic_as_cluster_interface(probe):
    facts = probe("roce_connectx6", cluster_interface="ens1f0")

    assert facts["cluster_interface_source"] == "configured"
    assert facts["cluster_address"] == "172.19.0.60"
    assert facts["recommended_env"]["NCCL_SOCKET_IFNAME"] == "=ens1f0"
    assert facts["recommended_env"]["VLLM_HOST_IP"] == "172.19.0.60"
    assert facts["notes"] == []


def test_default_route_wins_over_docker_and_two_private_networks_are_flagged(probe):
    facts = probe("docker_two_private")

    assert facts["cluster_interface"] == "enp65s0f0"
    assert facts["cluster_address"] == "10.1.2.21"
    ignored = sorted(i["name"] for i in facts["interfaces"] if i["ignored"])
    assert ignored == ["docker0", "lo", "veth3f1c2a9", "vethb71d0e2"]
    (note,) = facts["notes"]
    assert "10.1.2.0/24, 192.168.100.0/24" in note
    assert "llmserve_cluster_network" in note


def test_cluster_network_picks_the_interface_holding_an_address_in_it(probe):
    facts = probe("docker_two_private", cluster_network="192.168.100.0/24")

    assert facts["cluster_interface"] == "enp65s0f1"
    assert facts["cluster_interface_source"] == "cluster_network"
    assert facts["cluster_address"] == "192.168.100.21"
    assert facts["recommended_env"]["GLOO_SOCKET_IFNAME"] == "enp65s0f1"
    assert facts["notes"] == []


def test_configured_interface_that_does_not_exist_names_the_variable_and_the_interfaces(probe):
    with pytest.raises(FabricProbeError) as raised:
        probe("docker_two_private", cluster_interface="bond0")

    message = str(raised.value)
    assert "llmserve_cluster_interface is 'bond0'" in message
    assert "enp65s0f1 (192.168.100.21/24, fe80::b696:91ff:fea7:3e41/64)" in message
    assert "docker0" in message


def test_configured_interface_outside_the_configured_network_is_refused(probe):
    with pytest.raises(FabricProbeError, match=r"has no address in llmserve_cluster_network 192\.168\.100\.0/24"):
        probe("docker_two_private", cluster_interface="enp65s0f0", cluster_network="192.168.100.0/24")


def test_cluster_network_nobody_has_is_refused(probe):
    with pytest.raises(FabricProbeError, match="no interface of this host has an address in"):
        probe("ethernet_plain", cluster_network="192.168.0.0/16")


def test_a_cluster_network_that_is_no_cidr_is_refused(probe):
    with pytest.raises(FabricProbeError, match="is not a CIDR"):
        probe("ethernet_plain", cluster_network="eno1")


def test_overrides_replace_add_and_drop_recommendations(probe):
    facts = probe(
        "ib_8x_one_down",
        env_overrides={"NCCL_IB_HCA": "=mlx5_0:1,mlx5_1:1", "NCCL_IB_GID_INDEX": 3, "VLLM_HOST_IP": None},
    )

    env = facts["recommended_env"]
    assert env["NCCL_IB_HCA"] == "=mlx5_0:1,mlx5_1:1"
    assert env["NCCL_IB_GID_INDEX"] == "3"
    assert "VLLM_HOST_IP" not in env
    assert facts["env_overridden"] == ["NCCL_IB_GID_INDEX", "NCCL_IB_HCA", "VLLM_HOST_IP"]


def test_default_route_through_a_bridge_falls_back_to_a_real_interface(host_tree):
    root = host_tree("docker_two_private")
    route = root / "proc" / "net" / "route"
    lines = route.read_text().splitlines()
    lines[1] = lines[1].replace("enp65s0f0", "docker0")
    route.write_text("\n".join(lines) + "\n")

    facts = probe_root(root)

    assert facts["default_route_interface"] == "docker0"
    assert facts["cluster_interface"] == "enp65s0f0"
    assert facts["cluster_interface_source"] == "first_up_interface"


def test_host_with_only_veth_plumbing_still_uses_its_default_route(tmp_path):
    # A network-namespaced test host sees only its end of a veth pair.
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "route").write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "veth-h1\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    )
    ip_addresses = [
        {
            "ifname": "veth-h1",
            "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
            "operstate": "UP",
            "addr_info": [{"family": "inet", "local": "192.168.0.11", "prefixlen": 24, "scope": "global"}],
        }
    ]

    facts = probe_fabric(ip_addresses, str(tmp_path / "sys"), str(tmp_path), str(tmp_path / "dev"))

    assert facts["cluster_interface"] == "veth-h1"
    assert facts["recommended_env"]["VLLM_HOST_IP"] == "192.168.0.11"


def test_default_route_with_the_lowest_metric_wins(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "route").write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
        "eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
        "eth1\t00000000\t0100100A\t0002\t0\t0\t1\t00000000\t0\t0\t0\n"
    )

    assert read_default_route(str(tmp_path)) == ("eth0", "10.0.0.1")


@pytest.mark.parametrize(
    ("name", "ignored"),
    [
        ("docker0", True),
        ("veth3f1c2a9", True),
        ("virbr0", True),
        ("cni0", True),
        ("flannel.1", True),
        ("br-5b0e1c2d", True),
        ("lo", True),
        ("eno1", False),
        ("ibp25s0", False),
        ("bond0", False),
        ("lom1", False),
    ],
)
def test_container_plumbing_is_never_a_cluster_interface(name, ignored):
    assert is_ignored_interface(name) is ignored
