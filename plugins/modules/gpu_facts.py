#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: gpu_facts
short_description: Describe the NVIDIA GPUs of a host through NVML
version_added: 0.1.0
author: llmserve.cluster contributors (@llmserve)
description:
  - Reads the NVIDIA Management Library (NVML) through the C(pynvml) module of the C(nvidia-ml-py) package and
    sets the C(llmserve_gpu) fact.
  - Reports the driver and CUDA driver versions, every GPU's name, UUID, PCI bus id, memory in MiB, compute
    capability, MIG and persistence mode, and the NVLink/NVSwitch topology between GPUs.
  - A host without GPUs, without the NVIDIA driver, or without C(pynvml) gets C(available=false), an empty
    GPU list and a reason; the module does not fail there.
  - On hosts with NVSwitches it also reads whether C(nvidia-fabricmanager) runs and its version, because CUDA
    refuses to start (error 802) until fabric manager at the driver's exact version has set up the switches.
requirements:
  - nvidia-ml-py (the C(pynvml) module) on the managed host
attributes:
  check_mode:
    support: full
    description: The module only reads; it behaves the same in check mode.
  diff_mode:
    support: none
    description: The module changes nothing, so there is nothing to diff.
options: {}
notes:
  - Memory values come from C(nvmlDeviceGetMemoryInfo) (version 1), where used memory includes the driver's
    reserve, so an idle H100 80GB reports about 550 MiB used out of 81559 MiB.
"""

EXAMPLES = r"""
- name: Read the GPUs of every node
  llmserve.cluster.gpu_facts:

- name: Show how many GPUs each node has
  ansible.builtin.debug:
    msg: "{{ ansible_facts.llmserve_gpu.gpu_count }} x {{ ansible_facts.llmserve_gpu.gpus[0].name | default('none') }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts set on the host.
  returned: always
  type: dict
  contains:
    llmserve_gpu:
      description: What NVML reports about the host's GPUs.
      returned: always
      type: dict
      contains:
        available:
          description: Whether at least one GPU answered NVML.
          type: bool
          sample: true
        reason:
          description: Why no GPU is available; null when GPUs are available.
          type: str
          sample: "NVML library (libnvidia-ml.so.1) not found: the NVIDIA driver is not installed"
        driver_version:
          description: NVIDIA driver version.
          type: str
          sample: "550.54.15"
        cuda_driver_version:
          description: Newest CUDA version the driver supports.
          type: str
          sample: "12.4"
        gpu_count:
          description: Number of GPUs listed in RV(ansible_facts.llmserve_gpu.gpus).
          type: int
          sample: 8
        gpus:
          description: One entry per GPU, in NVML index order.
          type: list
          elements: dict
          contains:
            index:
              description: NVML index.
              type: int
            name:
              description: Product name.
              type: str
              sample: "NVIDIA H100 80GB HBM3"
            uuid:
              description: GPU UUID.
              type: str
            pci_bus_id:
              description: PCI bus id as NVML writes it.
              type: str
              sample: "00000000:18:00.0"
            pci_address:
              description: PCI address as sysfs writes it, to match NICs in C(llmserve_fabric).
              type: str
              sample: "0000:18:00.0"
            memory_total_mib:
              description: Total memory in MiB.
              type: int
              sample: 81559
            memory_free_mib:
              description: Free memory in MiB.
              type: int
            memory_used_mib:
              description: Used memory in MiB, driver reserve included.
              type: int
            compute_capability:
              description: CUDA compute capability.
              type: str
              sample: "9.0"
            mig_mode:
              description: C(enabled) or C(disabled); null where the GPU has no MIG.
              type: str
            persistence_mode:
              description: Whether persistence mode is on; null when NVML cannot tell.
              type: bool
            utilization_gpu_percent:
              description: GPU utilization over the last sample period.
              type: int
            nvlink_active_links:
              description: Number of active NVLinks.
              type: int
              sample: 18
            fabric_state:
              description: >-
                NVLink fabric registration (C(completed), C(in_progress), C(not_started), C(not_supported),
                C(failed)); null before Hopper.
              type: str
        nvlink_present:
          description: Whether any GPU has an active NVLink.
          type: bool
        nvswitch_present:
          description: Whether the NVLinks end in NVSwitches.
          type: bool
        topology:
          description: >-
            GPU-to-GPU connections. C(matrix) reads like C(nvidia-smi topo -m) (C(NV18), C(NODE), C(SYS), ...),
            C(pcie) holds the PCIe common ancestor only, C(all_pairs_nvlink) is true when NVLink joins every pair.
          type: dict
        fabric_manager_active:
          description: Whether C(nvidia-fabricmanager) is active; null on hosts without NVSwitch.
          type: bool
        fabric_manager_version:
          description: Version printed by C(nv-fabricmanager --version); null on hosts without NVSwitch.
          type: str
          sample: "550.54.15"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._gpu_probe import (
    parse_fabric_manager_version,
    parse_systemctl_is_active,
    probe_gpus,
)

try:
    import pynvml
except ImportError:
    pynvml = None


def fabric_manager_facts(module):
    """Fabric manager must run at the driver's exact version before CUDA starts on NVSwitch systems."""
    facts = {"fabric_manager_active": False, "fabric_manager_version": None}
    systemctl = module.get_bin_path("systemctl")
    if systemctl:
        rc, out, _err = module.run_command([systemctl, "is-active", "nvidia-fabricmanager"])
        facts["fabric_manager_active"] = parse_systemctl_is_active(rc, out)
    fabric_manager = module.get_bin_path("nv-fabricmanager", opt_dirs=["/usr/bin", "/usr/sbin"])
    if fabric_manager:
        _rc, out, err = module.run_command([fabric_manager, "--version"])
        facts["fabric_manager_version"] = parse_fabric_manager_version(out + err)
    return facts


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    facts = probe_gpus(pynvml)
    if facts["nvswitch_present"]:
        facts.update(fabric_manager_facts(module))
    module.exit_json(changed=False, ansible_facts={"llmserve_gpu": facts})


if __name__ == "__main__":
    main()
