# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Decisions of the ``nvidia_driver`` role, as plain functions over what a host shows.

Everything here is pure or reads files below a root directory given by the caller, so the
same code runs on a managed node (root ``/``) and in unit tests (a captured tree).

Package names follow NVIDIA's CUDA network repositories:

* Ubuntu (``cuda-keyring`` .deb): ``nvidia-open-<branch>`` / ``cuda-drivers-<branch>`` up to
  branch 580; from 590 the branch left the names (``nvidia-open`` / ``cuda-drivers``) and a
  ``nvidia-driver-pinning-<branch>`` package keeps apt on the branch (it exists from 580 on).
* RHEL 9 (``cuda-rhel9.repo``): DNF module streams ``nvidia-driver:<branch>-open`` (open
  kernel modules, DKMS) and ``nvidia-driver:<branch>-dkms`` (proprietary, DKMS).
* Fabric manager and NSCQ must equal the driver version exactly. Before 580 their names carry
  the branch (Ubuntu ``nvidia-fabricmanager-<branch>``, ``libnvidia-nscq-<branch>``; RHEL
  ``nvidia-fabric-manager``, ``libnvidia-nscq-<branch>``); from 580 they are
  ``nvidia-fabricmanager`` and ``libnvidia-nscq`` on both families.
"""

from __future__ import annotations

import configparser
import os
import re
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

NVIDIA_PCI_VENDOR = "0x10de"
# PCI base class 0x03 is "display controller" (0x0300 VGA, 0x0302 3D): the GPUs themselves.
# Other NVIDIA functions (HDMI audio 0x0403, USB-C 0x0c03) are not GPUs.
DISPLAY_CLASS_PREFIX = "0x03"
# NVSwitch chips enumerate as "bridge, other" (class 0x068000 on HGX A100/H100).
NVSWITCH_CLASS_PREFIX = "0x0680"

FLAVOURS = ("open", "proprietary")
SECURE_BOOT_ENABLED = "enabled"
SECURE_BOOT_DISABLED = "disabled"
SECURE_BOOT_UNKNOWN = "unknown"

# EFI variable GUIDs: the global namespace (SecureBoot, SetupMode) and shim's (MokSBStateRT).
EFI_GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
SHIM_LOCK_GUID = "605dab50-e046-4300-abb6-3dd810dd8b23"

DEFAULT_REPO_BASE_URL = "https://developer.download.nvidia.com/compute/cuda/repos"
# Files inside each repository directory: the Ubuntu keyring package (installs the apt source and
# /usr/share/keyrings/cuda-archive-keyring.gpg) and the RPM signing key since the 2022 key rotation.
DEFAULT_DEBIAN_KEYRING_PACKAGE = "cuda-keyring_1.1-1_all.deb"
DEFAULT_REDHAT_GPG_KEY = "D42D0685.pub"
# Branch from which Ubuntu drops the branch from driver package names (NVIDIA "590 renames").
UNVERSIONED_NAMES_BRANCH = 590
# Branch from which the apt pinning packages exist and fabric manager / NSCQ lost the branch suffix.
PINNING_PACKAGES_BRANCH = 580
FABRIC_MANAGER_RENAMED_BRANCH = 580

LOCAL_HOST_NAMES = frozenset({"localhost", "localhost.localdomain", "localhost4", "localhost6", "::1"})

REDHAT_FAMILY_DISTRIBUTIONS = ("RedHat", "Rocky", "AlmaLinux", "CentOS")
SUPPORTED_PLATFORMS = (
    "Ubuntu 22.04 (x86_64)",
    "Ubuntu 24.04 (x86_64)",
    "RHEL 9 family: Red Hat Enterprise Linux, Rocky Linux, AlmaLinux, CentOS Stream 9 (x86_64)",
)


class PciDevice(NamedTuple):
    address: str
    vendor: str
    device: str
    pci_class: str


class LoadedDriver(NamedTuple):
    version: str
    branch: str
    # "open", "proprietary", or None when only a version was reported (NVML does not say).
    flavour: Optional[str]


class Platform(NamedTuple):
    family: str  # "debian" or "redhat"
    repo_distro: str  # directory name under the CUDA repository: ubuntu2204, ubuntu2404, rhel9
    label: str


# ---------------------------------------------------------------------------------------------
# Reading the host (below a root directory)
# ---------------------------------------------------------------------------------------------


def read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _read_bytes(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def read_pci_devices(sysfs_root: str) -> List[PciDevice]:
    """Every PCI function under ``<sysfs_root>/bus/pci/devices`` with its vendor, device and class."""
    devices_dir = os.path.join(sysfs_root, "bus", "pci", "devices")
    try:
        addresses = sorted(os.listdir(devices_dir))
    except OSError:
        return []
    devices = []
    for address in addresses:
        values = []
        for attribute in ("vendor", "device", "class"):
            text = read_text(os.path.join(devices_dir, address, attribute))
            values.append((text or "").strip().lower())
        vendor, device, pci_class = values
        if vendor and pci_class:
            devices.append(PciDevice(address, vendor, device, pci_class))
    return devices


def nvidia_gpus(devices: List[PciDevice]) -> List[PciDevice]:
    return [d for d in devices if d.vendor == NVIDIA_PCI_VENDOR and d.pci_class.startswith(DISPLAY_CLASS_PREFIX)]


def nvswitches(devices: List[PciDevice]) -> List[PciDevice]:
    return [d for d in devices if d.vendor == NVIDIA_PCI_VENDOR and d.pci_class.startswith(NVSWITCH_CLASS_PREFIX)]


def infiniband_devices(sysfs_root: str) -> List[str]:
    """Names under ``/sys/class/infiniband`` (mlx5_0, ...): RDMA devices that nvidia-peermem serves."""
    try:
        return sorted(os.listdir(os.path.join(sysfs_root, "class", "infiniband")))
    except OSError:
        return []


def read_machine_id(etc_root: str) -> Optional[str]:
    text = (read_text(os.path.join(etc_root, "machine-id")) or "").strip()
    return text or None


# ---------------------------------------------------------------------------------------------
# Driver versions
# ---------------------------------------------------------------------------------------------

_VERSION_AFTER_MODULE = re.compile(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+\.\d+(?:\.\d+)?)\s")


def parse_proc_driver_version(text: Optional[str]) -> Optional[LoadedDriver]:
    """Parse ``/proc/driver/nvidia/version``; None when no NVIDIA kernel module is loaded.

    Lines look like ``NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.195.03  Release
    Build ...`` (open modules) or ``NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue
    Mar  5 ...`` (proprietary).
    """
    if not text:
        return None
    for line in text.splitlines():
        if not line.startswith("NVRM version:"):
            continue
        match = _VERSION_AFTER_MODULE.search(line + " ")
        if not match:
            return None
        version = match.group(1)
        flavour = "open" if "Open Kernel Module" in line else "proprietary"
        return LoadedDriver(version, branch_of(version), flavour)
    return None


def branch_of(version: str) -> str:
    """The driver branch is the first version component: 570.195.03 -> "570"."""
    return version.split(".", 1)[0]


def upstream_version(package_version: Optional[str]) -> Optional[str]:
    """Driver version inside a package version: ``570.172.08-0ubuntu1`` or ``3:570.172.08`` -> ``570.172.08``."""
    if not package_version:
        return None
    version = package_version.strip()
    if re.match(r"^\d+:", version):
        version = version.split(":", 1)[1]
    version = version.split("-", 1)[0]
    return version or None


def driver_matches(loaded: Optional[LoadedDriver], branch: str, flavour: str, version: str = "") -> Tuple[bool, str]:
    """Whether the loaded driver already is the wanted one, with the reason in words."""
    if loaded is None:
        return False, "no NVIDIA kernel module is loaded"
    if version:
        if loaded.version != version:
            return False, f"loaded driver {loaded.version} is not the requested version {version}"
    elif loaded.branch != str(branch):
        return False, f"loaded driver {loaded.version} is on branch {loaded.branch}, not {branch}"
    if loaded.flavour is not None and loaded.flavour != flavour:
        return False, f"loaded driver {loaded.version} uses the {loaded.flavour} kernel modules, not the {flavour} ones"
    return True, f"loaded driver {loaded.version} ({loaded.flavour or 'flavour unknown'}) already matches"


def reboot_required(installed_version: Optional[str], loaded: Optional[LoadedDriver]) -> bool:
    """A reboot is due when the packaged driver is not the one running (new install or upgrade)."""
    if installed_version is None:
        return False
    return loaded is None or loaded.version != installed_version


# ---------------------------------------------------------------------------------------------
# Secure Boot
# ---------------------------------------------------------------------------------------------


def parse_mokutil_sb_state(output: str) -> Optional[str]:
    """State from ``mokutil --sb-state`` (stdout and stderr together); None when it cannot tell.

    ``SecureBoot enabled`` followed by ``SecureBoot validation is disabled in shim`` means shim
    lets unsigned modules load, so it counts as disabled for this purpose.
    """
    if "SecureBoot enabled" in output:
        if "validation is disabled in shim" in output:
            return SECURE_BOOT_DISABLED
        return SECURE_BOOT_ENABLED
    if "SecureBoot disabled" in output:
        return SECURE_BOOT_DISABLED
    if "doesn't support Secure Boot" in output:
        return SECURE_BOOT_DISABLED
    return None


def efivar_flag(data: Optional[bytes]) -> Optional[bool]:
    """Value of a one-byte EFI variable read from efivarfs (4 attribute bytes, then the value)."""
    if data is None or len(data) < 5:
        return None
    return data[4] == 1


def secure_boot_from_efivars(
    efi_booted: bool,
    efivars_readable: bool,
    secure_boot: Optional[bytes],
    setup_mode: Optional[bytes],
    mok_sb_state: Optional[bytes],
) -> str:
    """The decision mokutil makes, from the raw variables (used when mokutil is not installed)."""
    if not efi_booted:
        return SECURE_BOOT_DISABLED  # legacy BIOS boot: no Secure Boot at all
    if not efivars_readable:
        return SECURE_BOOT_UNKNOWN
    enabled = efivar_flag(secure_boot)
    if enabled is None:
        return SECURE_BOOT_DISABLED  # firmware without the SecureBoot variable does not support it
    if not enabled or efivar_flag(setup_mode):
        return SECURE_BOOT_DISABLED
    if efivar_flag(mok_sb_state):
        return SECURE_BOOT_DISABLED  # shim validation switched off with mokutil --disable-validation
    return SECURE_BOOT_ENABLED


def read_secure_boot_from_efivars(sysfs_root: str) -> str:
    efi_dir = os.path.join(sysfs_root, "firmware", "efi")
    efivars_dir = os.path.join(efi_dir, "efivars")
    try:
        readable = bool(os.listdir(efivars_dir))
    except OSError:
        readable = False
    return secure_boot_from_efivars(
        os.path.isdir(efi_dir),
        readable,
        _read_bytes(os.path.join(efivars_dir, "SecureBoot-" + EFI_GLOBAL_GUID)),
        _read_bytes(os.path.join(efivars_dir, "SetupMode-" + EFI_GLOBAL_GUID)),
        _read_bytes(os.path.join(efivars_dir, "MokSBStateRT-" + SHIM_LOCK_GUID)),
    )


def secure_boot_blocks_install(state: str, install_needed: bool, signed_declared: bool) -> bool:
    """An unsigned DKMS module would be refused: Secure Boot on (or unknown) and no MOK signing declared."""
    if not install_needed or signed_declared:
        return False
    return state in (SECURE_BOOT_ENABLED, SECURE_BOOT_UNKNOWN)


# ---------------------------------------------------------------------------------------------
# Platforms, repositories and packages
# ---------------------------------------------------------------------------------------------


def cuda_platform(distribution: str, distribution_version: str, architecture: str) -> Optional[Platform]:
    """The CUDA repository platform for a host, or None when the role does not support it."""
    if architecture != "x86_64":
        return None
    if distribution == "Ubuntu" and distribution_version in ("22.04", "24.04"):
        return Platform("debian", "ubuntu" + distribution_version.replace(".", ""), "Ubuntu " + distribution_version)
    major = distribution_version.split(".", 1)[0]
    if distribution in REDHAT_FAMILY_DISTRIBUTIONS and major == "9":
        return Platform("redhat", "rhel9", f"{distribution} {distribution_version}")
    return None


def repo_url(base_url: str, platform: Platform, architecture: str = "x86_64") -> str:
    """``https://developer.download.nvidia.com/compute/cuda/repos/<distro>/x86_64/``."""
    return f"{base_url.rstrip('/')}/{platform.repo_distro}/{architecture}/"


def _check_branch(branch: str) -> int:
    if not re.match(r"^\d{3}$", str(branch)):
        raise ValueError(f"driver branch must be three digits such as '570', got {branch!r}")
    return int(branch)


def _check_flavour(flavour: str) -> None:
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}, got {flavour!r}")


def redhat_module_stream(branch: str, flavour: str) -> str:
    """DNF module stream: ``570-open`` (open kernel modules) or ``570-dkms`` (proprietary), both DKMS."""
    _check_branch(branch)
    _check_flavour(flavour)
    return f"{branch}-{'open' if flavour == 'open' else 'dkms'}"


def parse_dnf_module_state(text: Optional[str]) -> Optional[str]:
    """Enabled stream from ``/etc/dnf/modules.d/nvidia-driver.module``; None when not enabled."""
    if not text:
        return None
    parser = configparser.ConfigParser()
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    if not parser.has_section("nvidia-driver"):
        return None
    section = parser["nvidia-driver"]
    if section.get("state", "").strip() != "enabled":
        return None
    return section.get("stream", "").strip() or None


def pin_packages(platform: Platform, branch: str) -> List[str]:
    """apt packages that hold the system on the branch; installed before the driver."""
    number = _check_branch(branch)
    if platform.family == "debian" and number >= PINNING_PACKAGES_BRANCH:
        return [f"nvidia-driver-pinning-{branch}"]
    return []


def driver_packages(platform: Platform, branch: str, flavour: str, version: str = "") -> List[str]:
    """Package specs for the driver (apt names with an optional ``=<version>-*``, or a dnf ``@module:stream``)."""
    number = _check_branch(branch)
    _check_flavour(flavour)
    if platform.family == "redhat":
        if version:
            raise ValueError("an exact driver version can only be pinned on Ubuntu; RHEL 9 follows the module stream")
        return ["@nvidia-driver:" + redhat_module_stream(branch, flavour)]
    name = "nvidia-open" if flavour == "open" else "cuda-drivers"
    if number < UNVERSIONED_NAMES_BRANCH:
        name = f"{name}-{branch}"
    if version:
        if branch_of(version) != str(branch):
            raise ValueError(f"driver version {version} is not on branch {branch}")
        name = f"{name}={version}-*"
    return [name]


def kernel_packages(platform: Platform, kernel_release: str) -> List[str]:
    """Headers for the running kernel plus DKMS, so the module builds for the kernel that boots."""
    if platform.family == "debian":
        return ["linux-headers-" + kernel_release, "dkms"]
    return ["kernel-devel-" + kernel_release, "kernel-headers", "dkms"]


def installed_version_packages(platform: Platform, branch: str) -> List[str]:
    """Packages whose version is the installed driver's, in the order to ask the package database."""
    number = _check_branch(branch)
    if platform.family == "redhat":
        return ["nvidia-driver-cuda-libs", "nvidia-driver", "nvidia-kmod-common"]
    if number < UNVERSIONED_NAMES_BRANCH:
        return ["libnvidia-compute-" + branch, "nvidia-open-" + branch, "cuda-drivers-" + branch]
    return ["libnvidia-compute", "nvidia-open", "cuda-drivers"]


def fabric_manager_version(installed_version: Optional[str], loaded: Optional[LoadedDriver]) -> Optional[str]:
    """Fabric manager follows the installed driver (what boots next), else the loaded one."""
    if installed_version:
        return installed_version
    return loaded.version if loaded else None


def fabric_manager_packages(platform: Platform, driver_version: str) -> List[str]:
    """Fabric manager and NSCQ pinned to exactly the driver version."""
    branch = branch_of(driver_version)
    number = _check_branch(branch)
    renamed = number >= FABRIC_MANAGER_RENAMED_BRANCH
    if platform.family == "debian":
        suffix = "" if renamed else "-" + branch
        return [
            f"nvidia-fabricmanager{suffix}={driver_version}-*",
            f"libnvidia-nscq{suffix}={driver_version}-*",
        ]
    if renamed:
        return ["nvidia-fabricmanager-" + driver_version, "libnvidia-nscq-" + driver_version]
    return ["nvidia-fabric-manager-" + driver_version, f"libnvidia-nscq-{branch}-{driver_version}"]


# ---------------------------------------------------------------------------------------------
# The control node
# ---------------------------------------------------------------------------------------------


def is_control_node(
    connection: Optional[str],
    inventory_hostname: Optional[str],
    ansible_host: Optional[str],
    host_machine_id: Optional[str],
    controller_machine_id: Optional[str],
) -> Tuple[bool, str]:
    """Whether the managed host is the machine running Ansible, with the evidence in words."""
    if connection == "local":
        return True, "ansible_connection is local"
    for label, name in (("inventory_hostname", inventory_hostname), ("ansible_host", ansible_host)):
        if name and (name.lower() in LOCAL_HOST_NAMES or name.startswith("127.")):
            return True, f"{label} {name} is a loopback name"
    if host_machine_id and controller_machine_id and host_machine_id == controller_machine_id:
        return True, "/etc/machine-id equals the controller's"
    return False, "a different machine from the controller"


# ---------------------------------------------------------------------------------------------
# Putting it together
# ---------------------------------------------------------------------------------------------


def describe_device(device: PciDevice) -> Dict[str, str]:
    return {"pci_address": device.address, "device_id": device.device, "class": device.pci_class}


def build_state(
    *,
    branch: str,
    flavour: str,
    version: str,
    repo_base_url: str,
    debian_keyring_package: str = DEFAULT_DEBIAN_KEYRING_PACKAGE,
    redhat_gpg_key: str = DEFAULT_REDHAT_GPG_KEY,
    secure_boot_signed: bool,
    platform: Optional[Platform],
    kernel_release: str,
    pci_devices: List[PciDevice],
    infiniband: List[str],
    peermem_loaded: bool,
    loaded: Optional[LoadedDriver],
    installed_package_version: Optional[str],
    secure_boot: Dict[str, Optional[str]],
    control_node: Tuple[bool, str],
    reported_nvswitch_present: Optional[bool],
    redhat_enabled_stream: Optional[str],
) -> Dict[str, Any]:
    """Everything the role decides from, as one JSON-ready dict (``ansible_facts.llmserve_nvidia_driver``)."""
    _check_branch(branch)
    _check_flavour(flavour)
    gpus = nvidia_gpus(pci_devices)
    switches = nvswitches(pci_devices)
    # NVML (gpu_facts) only sees switches once a driver runs; sysfs sees them always. Either is proof.
    nvswitch_present = bool(switches) or bool(reported_nvswitch_present)
    matches, reason = driver_matches(loaded, branch, flavour, version)
    installed_version = upstream_version(installed_package_version)
    fm_version = fabric_manager_version(installed_version, loaded)
    state: Dict[str, Any] = {
        "supported_platforms": list(SUPPORTED_PLATFORMS),
        "platform": platform._asdict() if platform else None,
        "gpus": [describe_device(d) for d in gpus],
        "gpu_present": bool(gpus),
        "nvswitches": [describe_device(d) for d in switches],
        "nvswitch_present": nvswitch_present,
        "infiniband_devices": infiniband,
        "infiniband_present": bool(infiniband),
        "peermem_loaded": peermem_loaded,
        "loaded_driver": loaded._asdict() if loaded else None,
        "installed_driver_version": installed_version,
        "secure_boot": secure_boot,
        "control_node": control_node[0],
        "control_node_reason": control_node[1],
        "install_needed": not matches,
        "install_reason": reason,
        "secure_boot_blocks_install": secure_boot_blocks_install(
            secure_boot.get("state") or SECURE_BOOT_UNKNOWN, not matches, secure_boot_signed
        ),
        "reboot_required": reboot_required(installed_version, loaded),
        "fabric_manager_version": fm_version,
        "repo_url": None,
        "keyring_url": None,
        "gpg_key_url": None,
        "pin_packages": [],
        "driver_packages": [],
        "kernel_packages": [],
        "fabric_manager_packages": [],
        "redhat_module_stream": None,
        "redhat_enabled_stream": redhat_enabled_stream,
        "redhat_module_reset_needed": False,
    }
    if platform is None:
        return state
    url = repo_url(repo_base_url, platform)
    state["repo_url"] = url
    if platform.family == "debian":
        state["keyring_url"] = url + debian_keyring_package
    else:
        state["gpg_key_url"] = url + redhat_gpg_key
        stream = redhat_module_stream(branch, flavour)
        state["redhat_module_stream"] = stream
        # DNF refuses to switch an enabled module to another stream until it is reset.
        state["redhat_module_reset_needed"] = redhat_enabled_stream is not None and redhat_enabled_stream != stream
    state["pin_packages"] = pin_packages(platform, branch)
    if platform.family == "debian" or not version:
        state["driver_packages"] = driver_packages(platform, branch, flavour, version)
    state["kernel_packages"] = kernel_packages(platform, kernel_release)
    if fm_version:
        state["fabric_manager_packages"] = fabric_manager_packages(platform, fm_version)
    return state
