#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: fabric_facts
short_description: Describe a host's cluster network and RDMA fabric, and the NCCL environment they imply
version_added: 0.1.0
author: llmserve.cluster contributors (@llmserve)
description:
  - Reads C(/sys/class/net), C(/sys/class/infiniband), C(/proc/net/route), C(/proc/modules) and C(/dev/infiniband),
    plus the output of C(ip -json addr show), and sets the C(llmserve_fabric) fact.
  - Chooses the cluster interface that carries Ray, Gloo and NCCL socket traffic. O(cluster_interface) wins, then
    O(cluster_network); otherwise the interface of the default route, skipping C(lo), C(docker*), C(veth*),
    C(virbr*), C(cni*), C(flannel*) and C(br-*).
  - Recommends C(NCCL_SOCKET_IFNAME), C(GLOO_SOCKET_IFNAME) and C(VLLM_HOST_IP) for that interface, C(NCCL_IB_HCA)
    with the active InfiniBand ports (or active RoCE ports when there is no InfiniBand), and C(NCCL_IB_GID_INDEX)
    (the RoCE v2 IPv4 GID) on RoCE.
attributes:
  check_mode:
    support: full
    description: The module only reads; it behaves the same in check mode.
  diff_mode:
    support: none
    description: The module changes nothing, so there is nothing to diff.
options:
  cluster_interface:
    description:
      - Interface for cluster traffic, usually set from the inventory variable C(llmserve_cluster_interface).
      - The module fails, listing the host's interfaces, when the host has no interface of that name.
    type: str
  cluster_network:
    description:
      - Network (CIDR) for cluster traffic, usually set from C(llmserve_cluster_network).
      - Without O(cluster_interface), the interface holding an address in this network is chosen. With it, that
        interface must hold such an address.
    type: str
  env_overrides:
    description:
      - Values that replace the recommended environment, by variable name. A null or empty value removes the
        recommendation.
    type: dict
    default: {}
  sysfs_root:
    description: >-
      Where sysfs is mounted; the network and InfiniBand devices are read under its C(class/). Tests point it at a
      captured tree.
    type: path
    default: /sys
  proc_root:
    description: >-
      Where procfs is mounted; the default route (C(net/route)) and the loaded kernel modules are read under it.
    type: path
    default: /proc
  dev_root:
    description: Where the device nodes live, checked for C(infiniband/), the RDMA character devices NCCL opens.
    type: path
    default: /dev
requirements:
  - iproute2 with JSON output (C(ip -json), iproute2 4.13 or later)
notes:
  - C(NCCL_SOCKET_IFNAME) and C(NCCL_IB_HCA) start with C(=) so NCCL matches names exactly, not as prefixes.
"""

EXAMPLES = r"""
- name: Describe every node's network
  llmserve.cluster.fabric_facts:
    cluster_interface: "{{ llmserve_cluster_interface | default(omit) }}"
    cluster_network: "{{ llmserve_cluster_network | default(omit) }}"
    env_overrides: "{{ llmserve_env_overrides | default({}) }}"

- name: Pin NCCL to two HCAs on this node
  llmserve.cluster.fabric_facts:
    env_overrides:
      NCCL_IB_HCA: "=mlx5_0:1,mlx5_1:1"
"""

RETURN = r"""
ansible_facts:
  description: Facts set on the host.
  returned: always
  type: dict
  contains:
    llmserve_fabric:
      description: The host's cluster network, RDMA devices and the recommended environment.
      returned: always
      type: dict
      contains:
        cluster_interface:
          description: Interface chosen for cluster traffic.
          type: str
          sample: eno1
        cluster_interface_source:
          description: How it was chosen (C(configured), C(cluster_network), C(default_route), C(first_up_interface)).
          type: str
          sample: default_route
        cluster_interface_up:
          description: Whether the cluster interface is up.
          type: bool
        cluster_address:
          description: The address other nodes reach this one at; also C(VLLM_HOST_IP).
          type: str
          sample: 10.20.0.11
        cluster_network:
          description: Network (CIDR) of RV(ansible_facts.llmserve_fabric.cluster_address).
          type: str
          sample: 10.20.0.0/16
        default_route_interface:
          description: Interface of the IPv4 default route.
          type: str
        default_gateway:
          description: Gateway of the IPv4 default route.
          type: str
        interfaces:
          description: Every interface with state, addresses, PCI address, NUMA node and whether it is ignored.
          type: list
          elements: dict
        ib_present:
          description: Whether the host has any RDMA device in C(/sys/class/infiniband).
          type: bool
        rdma_devices:
          description: >-
            Every RDMA device with PCI address, NUMA node, firmware and per port state, physical state, rate,
            link layer, transport (C(InfiniBand) or C(RoCE)), non-empty GIDs, RoCE v2 IPv4 GID index and netdev.
          type: list
          elements: dict
        rdma_transport:
          description: Transport of the ports in C(NCCL_IB_HCA) (C(InfiniBand), C(RoCE)) or null.
          type: str
        active_rdma_ports:
          description: Active ports NCCL should use, as C(device:port).
          type: list
          elements: str
          sample: ["mlx5_0:1", "mlx5_1:1"]
        dev_infiniband_present:
          description: Whether C(/dev/infiniband) exists (NCCL needs it for RDMA).
          type: bool
        dev_infiniband:
          description: Entries of C(/dev/infiniband).
          type: list
          elements: str
        nvidia_peermem_loaded:
          description: Whether C(nvidia_peermem) (or the older C(nv_peer_mem)) is loaded, needed for GPUDirect RDMA.
          type: bool
        recommended_env:
          description: Environment for the vLLM and Ray services on this host, after O(env_overrides).
          type: dict
          sample:
            NCCL_SOCKET_IFNAME: "=eno1"
            GLOO_SOCKET_IFNAME: eno1
            VLLM_HOST_IP: 10.20.0.11
            NCCL_IB_HCA: "=mlx5_0:1,mlx5_1:1"
        env_overridden:
          description: Names in O(env_overrides).
          type: list
          elements: str
        notes:
          description: Observations worth a look, such as several private networks on one host.
          type: list
          elements: str
"""

import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._fabric_probe import FabricProbeError, probe_fabric


def main():
    module = AnsibleModule(
        argument_spec=dict(
            cluster_interface=dict(type="str"),
            cluster_network=dict(type="str"),
            env_overrides=dict(type="dict", default={}),
            sysfs_root=dict(type="path", default="/sys"),
            proc_root=dict(type="path", default="/proc"),
            dev_root=dict(type="path", default="/dev"),
        ),
        supports_check_mode=True,
    )
    ip = module.get_bin_path("ip", required=True, opt_dirs=["/usr/sbin", "/sbin"])
    # sysfs holds no IP addresses; iproute2's JSON is the stable way to read them.
    rc, out, err = module.run_command([ip, "-json", "addr", "show"])
    if rc != 0:
        module.fail_json(msg=f"'ip -json addr show' failed (iproute2 4.13 or later is needed): {err.strip()}")
    try:
        ip_addresses = json.loads(out)
    except ValueError as error:
        module.fail_json(msg=f"'ip -json addr show' printed no JSON: {error}")
    try:
        facts = probe_fabric(
            ip_addresses,
            sysfs_root=module.params["sysfs_root"],
            proc_root=module.params["proc_root"],
            dev_root=module.params["dev_root"],
            cluster_interface=module.params["cluster_interface"],
            cluster_network=module.params["cluster_network"],
            env_overrides=module.params["env_overrides"],
        )
    except FabricProbeError as error:
        module.fail_json(msg=str(error))
    module.exit_json(changed=False, ansible_facts={"llmserve_fabric": facts})


if __name__ == "__main__":
    main()
