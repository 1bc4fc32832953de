#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
module: nvidia_driver_facts
short_description: Read what the NVIDIA driver role decides from and return its decisions
version_added: 0.1.0
author: llmserve.cluster contributors (@llmserve)
description:
  - Reads the host without changing it, then decides what the C(llmserve.cluster.nvidia_driver) role must do.
  - NVIDIA GPUs and NVSwitches come from C(/sys/bus/pci/devices/*/{vendor,class}) (vendor C(0x10de); class
    C(0x03xxxx) for GPUs, C(0x0680xx) for NVSwitches); InfiniBand devices from C(/sys/class/infiniband).
  - The loaded driver comes from C(/proc/driver/nvidia/version); the installed one from the package database
    (C(dpkg-query) or C(rpm)).
  - Secure Boot comes from C(mokutil --sb-state), or from the EFI variables when mokutil is not installed.
  - Returns the CUDA repository URL and the package names for the host's distribution, branch and flavour,
    whether the driver must be installed, whether Secure Boot would refuse the module, whether a reboot is due,
    and whether the host is the control node.
options:
  branch:
    description: Driver branch to run, for example C(570).
    type: str
    required: true
  flavour:
    description:
      - Kernel module flavour.
      - C(open) is required for Grace Hopper and Blackwell and recommended from Turing on.
    type: str
    choices: [open, proprietary]
    default: open
  version:
    description:
      - Exact driver version such as C(570.172.08). Empty means any version of O(branch).
      - Only Ubuntu can pin an exact version; on RHEL 9 the module stream decides.
    type: str
    default: ''
  distribution:
    description: The host's C(ansible_facts.distribution).
    type: str
    required: true
  distribution_version:
    description: The host's C(ansible_facts.distribution_version).
    type: str
    required: true
  architecture:
    description: The host's C(ansible_facts.architecture).
    type: str
    required: true
  kernel:
    description: The running kernel release (C(ansible_facts.kernel)); kernel headers are installed for it.
    type: str
    required: true
  repo_base_url:
    description: Base of NVIDIA's CUDA repositories; C(<distro>/x86_64/) is appended.
    type: str
    default: https://developer.download.nvidia.com/compute/cuda/repos
  debian_keyring_package:
    description: File name of the keyring package inside the Ubuntu repository directory.
    type: str
    default: cuda-keyring_1.1-1_all.deb
  redhat_gpg_key:
    description: File name of the RPM signing key inside the RHEL repository directory.
    type: str
    default: D42D0685.pub
  secure_boot_signed:
    description: The user declares that DKMS signs the modules with an enrolled MOK, so Secure Boot does not block them.
    type: bool
    default: false
  reported_driver_version:
    description:
      - Driver version reported by C(llmserve.cluster.gpu_facts) (NVML).
      - Used only when C(/proc/driver/nvidia/version) is absent; it says nothing about the flavour.
    type: str
  reported_nvswitch_present:
    description: NVSwitch presence reported by C(llmserve.cluster.gpu_facts); either source finding switches counts.
    type: bool
  connection:
    description: The host's C(ansible_connection), to recognise the control node.
    type: str
  inventory_hostname:
    description: The host's C(inventory_hostname), to recognise the control node.
    type: str
  ansible_host:
    description: The host's C(ansible_host), to recognise the control node.
    type: str
  controller_machine_id:
    description: Content of C(/etc/machine-id) on the controller; a host with the same id is the controller.
    type: str
  root:
    description:
      - Directory that holds C(sys), C(proc) and C(etc) to read. Only tests change it.
      - C(mokutil) and the package database describe the running system, so they are asked only when this is C(/).
    type: path
    default: /
attributes:
  check_mode:
    support: full
    description: Only reads; runs the same in check mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is nothing to diff.
notes:
  - Supported platforms are Ubuntu 22.04 and 24.04 and the RHEL 9 family (RHEL, Rocky Linux, AlmaLinux,
    CentOS Stream 9), on x86_64. Elsewhere RV(ansible_facts.llmserve_nvidia_driver.platform) is null.
"""

EXAMPLES = r"""
- name: Read the NVIDIA driver state and the role's decisions
  llmserve.cluster.nvidia_driver_facts:
    branch: "570"
    flavour: open
    distribution: "{{ ansible_facts.distribution }}"
    distribution_version: "{{ ansible_facts.distribution_version }}"
    architecture: "{{ ansible_facts.architecture }}"
    kernel: "{{ ansible_facts.kernel }}"

- name: Stop when Secure Boot would refuse the unsigned module
  ansible.builtin.assert:
    that: not ansible_facts.llmserve_nvidia_driver.secure_boot_blocks_install
    fail_msg: "Secure Boot is {{ ansible_facts.llmserve_nvidia_driver.secure_boot.state }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to C(ansible_facts).
  returned: always
  type: complex
  contains:
    llmserve_nvidia_driver:
      description: What the host shows and what the role should do about it.
      returned: always
      type: dict
      contains:
        supported_platforms:
          description: The platforms the role supports, in words, for error messages.
          type: list
          elements: str
        platform:
          description:
            - C(family) (debian or redhat), C(repo_distro) (ubuntu2204, ubuntu2404, rhel9) and C(label).
            - Null on an unsupported platform.
          type: dict
        gpus:
          description: NVIDIA display-class PCI functions, each with C(pci_address), C(device_id) and C(class).
          type: list
          elements: dict
        gpu_present:
          description: At least one NVIDIA GPU is on the PCI bus.
          type: bool
        nvswitches:
          description:
            - NVIDIA PCI functions of class 0x0680 (NVSwitch).
            - Same keys as RV(ansible_facts.llmserve_nvidia_driver.gpus).
          type: list
          elements: dict
        nvswitch_present:
          description: NVSwitches were found in sysfs or reported by gpu_facts; fabric manager is then required.
          type: bool
        infiniband_devices:
          description: Entries of C(/sys/class/infiniband).
          type: list
          elements: str
        infiniband_present:
          description: Any InfiniBand/RoCE device exists, so nvidia-peermem is wanted.
          type: bool
        peermem_loaded:
          description: The nvidia_peermem kernel module is loaded.
          type: bool
        loaded_driver:
          description: C(version), C(branch) and C(flavour) of the loaded kernel module; null if none is loaded.
          type: dict
        installed_driver_version:
          description:
            - Driver version the package database holds, such as C(570.172.08).
            - Null if the driver is not installed from packages.
          type: str
        secure_boot:
          description:
            - C(state) (enabled, disabled or unknown), C(source) (mokutil or efivars).
            - C(detail) is what mokutil said.
          type: dict
        control_node:
          description: The host is the machine running Ansible; the role never reboots it.
          type: bool
        control_node_reason:
          description: Why the host is or is not the control node.
          type: str
        install_needed:
          description: The loaded driver is not the wanted branch, version or flavour.
          type: bool
        install_reason:
          description: Why RV(ansible_facts.llmserve_nvidia_driver.install_needed) is what it is.
          type: str
        secure_boot_blocks_install:
          description: Installing would build an unsigned module that Secure Boot refuses to load.
          type: bool
        reboot_required:
          description: The installed driver is not the loaded one.
          type: bool
        fabric_manager_version:
          description: Driver version fabric manager must match (installed, else loaded); null if neither is known.
          type: str
        repo_url:
          description: The CUDA repository directory for this platform.
          type: str
        keyring_url:
          description: URL of the cuda-keyring package (Ubuntu), else null.
          type: str
        gpg_key_url:
          description: URL of the repository signing key (RHEL), else null.
          type: str
        pin_packages:
          description: apt packages that keep the system on the branch, installed before the driver.
          type: list
          elements: str
        driver_packages:
          description: Driver package specs for apt, or the C(@nvidia-driver:<stream>) module spec for dnf.
          type: list
          elements: str
        kernel_packages:
          description: Kernel headers for the running kernel and DKMS.
          type: list
          elements: str
        fabric_manager_packages:
          description:
            - Fabric manager and NSCQ package specs.
            - Pinned to RV(ansible_facts.llmserve_nvidia_driver.fabric_manager_version).
          type: list
          elements: str
        redhat_module_stream:
          description: The DNF module stream to enable on RHEL 9, such as C(570-open).
          type: str
        redhat_enabled_stream:
          description: The nvidia-driver stream enabled now, if any.
          type: str
        redhat_module_reset_needed:
          description: Another nvidia-driver stream is enabled and must be reset before switching.
          type: bool
      sample:
        platform: {family: debian, repo_distro: ubuntu2204, label: Ubuntu 22.04}
        gpu_present: true
        nvswitch_present: true
        loaded_driver: {version: 570.195.03, branch: "570", flavour: open}
        install_needed: false
        driver_packages: [nvidia-open-570]
        fabric_manager_packages: [nvidia-fabricmanager-570=570.195.03-*, libnvidia-nscq-570=570.195.03-*]
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._nvidia_driver import (
    DEFAULT_DEBIAN_KEYRING_PACKAGE,
    DEFAULT_REDHAT_GPG_KEY,
    DEFAULT_REPO_BASE_URL,
    LoadedDriver,
    branch_of,
    build_state,
    cuda_platform,
    infiniband_devices,
    installed_version_packages,
    is_control_node,
    parse_dnf_module_state,
    parse_mokutil_sb_state,
    parse_proc_driver_version,
    read_machine_id,
    read_pci_devices,
    read_secure_boot_from_efivars,
    read_text,
)


def _secure_boot(module, sysfs_root, live):
    """Ask mokutil when it describes this system; fall back to the EFI variables."""
    mokutil = module.get_bin_path("mokutil") if live else None
    if mokutil:
        _rc, out, err = module.run_command([mokutil, "--sb-state"])
        output = "\n".join(part for part in (out.strip(), err.strip()) if part)
        state = parse_mokutil_sb_state(output)
        if state is not None:
            return {"state": state, "source": "mokutil", "detail": output}
        return {"state": read_secure_boot_from_efivars(sysfs_root), "source": "efivars", "detail": output}
    return {"state": read_secure_boot_from_efivars(sysfs_root), "source": "efivars", "detail": None}


def _installed_package_version(module, platform, branch):
    """First version the package database holds for the driver's core packages."""
    if platform.family == "debian":
        query = module.get_bin_path("dpkg-query")
        if not query:
            return None
        for name in installed_version_packages(platform, branch):
            rc, out, _err = module.run_command([query, "-W", "-f=${db:Status-Abbrev}|${Version}", name])
            status, _separator, version = out.partition("|")
            # "ii" = wanted and installed; removed packages keep their version in "rc" state.
            if rc == 0 and status.startswith("ii") and version.strip():
                return version.strip()
        return None
    rpm = module.get_bin_path("rpm")
    if not rpm:
        return None
    for name in installed_version_packages(platform, branch):
        rc, out, _err = module.run_command([rpm, "-q", "--qf", "%{VERSION}", name])
        if rc == 0 and out.strip():
            return out.strip()
    return None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            branch=dict(type="str", required=True),
            flavour=dict(type="str", default="open", choices=["open", "proprietary"]),
            version=dict(type="str", default=""),
            distribution=dict(type="str", required=True),
            distribution_version=dict(type="str", required=True),
            architecture=dict(type="str", required=True),
            kernel=dict(type="str", required=True),
            repo_base_url=dict(type="str", default=DEFAULT_REPO_BASE_URL),
            debian_keyring_package=dict(type="str", default=DEFAULT_DEBIAN_KEYRING_PACKAGE, no_log=False),
            redhat_gpg_key=dict(type="str", default=DEFAULT_REDHAT_GPG_KEY, no_log=False),
            secure_boot_signed=dict(type="bool", default=False),
            reported_driver_version=dict(type="str"),
            reported_nvswitch_present=dict(type="bool"),
            connection=dict(type="str"),
            inventory_hostname=dict(type="str"),
            ansible_host=dict(type="str"),
            controller_machine_id=dict(type="str"),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    root = params["root"]
    live = os.path.realpath(root) == "/"
    sysfs_root = os.path.join(root, "sys")
    etc_root = os.path.join(root, "etc")

    platform = cuda_platform(params["distribution"], params["distribution_version"], params["architecture"])
    loaded = parse_proc_driver_version(read_text(os.path.join(root, "proc", "driver", "nvidia", "version")))
    if loaded is None and params["reported_driver_version"]:
        reported = params["reported_driver_version"]
        loaded = LoadedDriver(reported, branch_of(reported), None)

    try:
        installed = _installed_package_version(module, platform, params["branch"]) if platform and live else None
        state = build_state(
            branch=params["branch"],
            flavour=params["flavour"],
            version=params["version"],
            repo_base_url=params["repo_base_url"],
            debian_keyring_package=params["debian_keyring_package"],
            redhat_gpg_key=params["redhat_gpg_key"],
            secure_boot_signed=params["secure_boot_signed"],
            platform=platform,
            kernel_release=params["kernel"],
            pci_devices=read_pci_devices(sysfs_root),
            infiniband=infiniband_devices(sysfs_root),
            peermem_loaded=os.path.isdir(os.path.join(sysfs_root, "module", "nvidia_peermem")),
            loaded=loaded,
            installed_package_version=installed,
            secure_boot=_secure_boot(module, sysfs_root, live),
            control_node=is_control_node(
                params["connection"],
                params["inventory_hostname"],
                params["ansible_host"],
                read_machine_id(etc_root),
                params["controller_machine_id"],
            ),
            reported_nvswitch_present=params["reported_nvswitch_present"],
            redhat_enabled_stream=parse_dnf_module_state(
                read_text(os.path.join(etc_root, "dnf", "modules.d", "nvidia-driver.module"))
            ),
        )
    except ValueError as error:
        module.fail_json(msg=str(error))
    module.exit_json(changed=False, ansible_facts={"llmserve_nvidia_driver": state})


if __name__ == "__main__":
    main()
