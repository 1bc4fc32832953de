#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: cluster_preflight
short_description: Check that the nodes of a cluster fit together before anything is installed
version_added: 0.1.0
author: llmserve.cluster contributors (@llmserve)
description:
  - Runs on the controller and compares the C(llmserve_gpu) and C(llmserve_fabric) facts of every host, as set by
    M(llmserve.cluster.gpu_facts) and M(llmserve.cluster.fabric_facts).
  - Fails when the nodes are on different cluster subnets or share a C(VLLM_HOST_IP), when a cluster interface is
    down, when a node has no usable GPU, when the driver is too old for the CUDA major of the vLLM build
    (CUDA 12 needs 525 or newer, CUDA 13 needs 580 or newer), or when an NVSwitch node lacks
    C(nvidia-fabricmanager) at the driver's exact version.
  - Warns, or fails with O(heterogeneous_gpus=error), when GPU models or counts differ between nodes, and warns when
    RDMA ports are active but C(nvidia_peermem) is not loaded (GPUDirect RDMA off) or C(/dev/infiniband) is missing.
  - Each message names the hosts, the fact field and the fix.
attributes:
  check_mode:
    support: full
    description: The action only compares facts; it behaves the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to diff.
options:
  hosts:
    description: Hosts to compare. Defaults to the play's hosts (C(ansible_play_hosts)).
    type: list
    elements: str
  heterogeneous_gpus:
    description:
      - What to do when GPU models or counts differ between nodes. vLLM runs one tensor_parallel_size everywhere and
        sizes the KV cache by the GPU with the least memory.
    type: str
    choices: [warn, error]
    default: warn
  vllm_cuda_major:
    description: CUDA major version of the vLLM build to be installed; sets the oldest driver branch accepted.
    type: int
    choices: [11, 12, 13]
    default: 12
  require_gpus:
    description: Whether every host must have GPUs (false for a CPU-only test cluster, which skips the GPU checks).
    type: bool
    default: true
notes:
  - Run it once per play (C(run_once=true)); it reads every host's facts through C(hostvars).
seealso:
  - module: llmserve.cluster.gpu_facts
  - module: llmserve.cluster.fabric_facts
"""

EXAMPLES = r"""
- name: Read facts on every node
  hosts: llmserve_cluster
  tasks:
    - name: GPUs
      llmserve.cluster.gpu_facts:

    - name: Network
      llmserve.cluster.fabric_facts:
        cluster_interface: "{{ llmserve_cluster_interface | default(omit) }}"

    - name: Compare the nodes before changing any of them
      llmserve.cluster.cluster_preflight:
        heterogeneous_gpus: error
        vllm_cuda_major: 12
      run_once: true
"""

RETURN = r"""
errors:
  description: Problems that stop the play.
  returned: always
  type: list
  elements: str
  sample:
    - "[vllm_host_ip] hosts node1, node2 share VLLM_HOST_IP 172.17.0.1 ..."
warnings:
  description: Problems worth fixing that do not stop the play; also shown as Ansible warnings.
  returned: always
  type: list
  elements: str
hosts:
  description: Hosts that were compared.
  returned: always
  type: list
  elements: str
"""
