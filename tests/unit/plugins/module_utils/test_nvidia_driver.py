# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Decisions of the nvidia_driver role, fed with real /proc, mokutil and sysfs shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
from host_trees import hgx_h100_driver_state, materialize_sysfs

from ansible_collections.llmserve.cluster.plugins.module_utils import _nvidia_driver as nd

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "nvidia_driver"
UBUNTU_2204 = nd.Platform("debian", "ubuntu2204", "Ubuntu 22.04")
UBUNTU_2404 = nd.Platform("debian", "ubuntu2404", "Ubuntu 24.04")
RHEL_9 = nd.Platform("redhat", "rhel9", "Rocky 9.4")


def efivar(value: int) -> bytes:
    # efivarfs: 4 attribute bytes (NV|BS|RT = 0x07, BS|RT = 0x06), then the one-byte value.
    return bytes([0x06, 0x00, 0x00, 0x00, value])


# --- PCI: GPUs and NVSwitches --------------------------------------------------------------------


def test_hgx_h100_has_eight_gpus_and_four_nvswitches(tmp_path):
    sysfs = materialize_sysfs(FIXTURES / "pci_hgx_h100.txt", tmp_path)
    devices = nd.read_pci_devices(str(sysfs))

    gpus = nd.nvidia_gpus(devices)
    switches = nd.nvswitches(devices)

    assert [g.address for g in gpus] == [
        "0000:18:00.0",
        "0000:2a:00.0",
        "0000:3a:00.0",
        "0000:5d:00.0",
        "0000:9a:00.0",
        "0000:ab:00.0",
        "0000:ba:00.0",
        "0000:db:00.0",
    ]
    assert {g.device for g in gpus} == {"0x2330"}
    assert [s.address for s in switches] == ["0000:bd:00.0", "0000:be:00.0", "0000:bf:00.0", "0000:c0:00.0"]
    assert {s.pci_class for s in switches} == {"0x068000"}


def test_bmc_vga_and_pmc_sierra_bridges_are_not_nvidia_devices(tmp_path):
    sysfs = materialize_sysfs(FIXTURES / "pci_hgx_h100.txt", tmp_path)
    devices = nd.read_pci_devices(str(sysfs))

    aspeed = [d for d in devices if d.address == "0000:03:00.0"]
    assert aspeed == [nd.PciDevice("0000:03:00.0", "0x1a03", "0x2000", "0x030000")]
    assert aspeed[0] not in nd.nvidia_gpus(devices)
    assert not any(d.vendor == "0x11f8" for d in nd.nvswitches(devices))


def test_workstation_audio_function_is_not_a_gpu_and_there_is_no_nvswitch(tmp_path):
    sysfs = materialize_sysfs(FIXTURES / "pci_workstation_rtx4090.txt", tmp_path)
    devices = nd.read_pci_devices(str(sysfs))

    assert [(g.address, g.device) for g in nd.nvidia_gpus(devices)] == [("0000:01:00.0", "0x2684")]
    assert nd.nvswitches(devices) == []


def test_cpu_only_vm_has_no_nvidia_device(tmp_path):
    sysfs = materialize_sysfs(FIXTURES / "pci_kvm_guest_no_gpu.txt", tmp_path)
    devices = nd.read_pci_devices(str(sysfs))

    assert len(devices) == 6
    assert nd.nvidia_gpus(devices) == []
    assert nd.nvswitches(devices) == []


def test_missing_sysfs_reads_as_no_devices(tmp_path):
    assert nd.read_pci_devices(str(tmp_path / "sys")) == []
    assert nd.infiniband_devices(str(tmp_path / "sys")) == []


def test_infiniband_devices_are_listed_by_name(tmp_path):
    for name in ("mlx5_1", "mlx5_0"):
        (tmp_path / "sys" / "class" / "infiniband" / name).mkdir(parents=True)
    assert nd.infiniband_devices(str(tmp_path / "sys")) == ["mlx5_0", "mlx5_1"]


# --- Loaded driver ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "version", "branch", "flavour"),
    [
        ("open_570.195.03_ubuntu2204.txt", "570.195.03", "570", "open"),
        ("open_555.58.02_redhat.txt", "555.58.02", "555", "open"),
        ("open_580.142_ubuntu2404.txt", "580.142", "580", "open"),
        ("proprietary_515.76_ubuntu1804.txt", "515.76", "515", "proprietary"),
        ("proprietary_535.216.03.txt", "535.216.03", "535", "proprietary"),
    ],
)
def test_proc_driver_version_gives_version_branch_and_flavour(fixture, version, branch, flavour):
    text = (FIXTURES / "proc_version" / fixture).read_text()
    assert nd.parse_proc_driver_version(text) == nd.LoadedDriver(version, branch, flavour)


@pytest.mark.parametrize("text", [None, "", "GCC version:  gcc version 12.3.0\n", "NVRM version: garbled\n"])
def test_no_driver_when_proc_file_is_missing_or_unreadable(text):
    assert nd.parse_proc_driver_version(text) is None


@pytest.mark.parametrize(
    ("package_version", "expected"),
    [
        ("570.172.08-0ubuntu1", "570.172.08"),  # cuda-drivers-570 on Ubuntu
        ("575.57.08-1", "575.57.08"),  # nvidia-fabricmanager-575
        ("3:570.124.06", "570.124.06"),  # RPM with epoch
        ("570.124.06", "570.124.06"),  # rpm -q --qf %{VERSION}
        ("", None),
        (None, None),
    ],
)
def test_upstream_version_strips_epoch_and_revision(package_version, expected):
    assert nd.upstream_version(package_version) == expected


OPEN_570 = nd.LoadedDriver("570.195.03", "570", "open")


@pytest.mark.parametrize(
    ("loaded", "branch", "flavour", "version", "matches", "reason_part"),
    [
        (OPEN_570, "570", "open", "", True, "already matches"),
        (OPEN_570, "580", "open", "", False, "branch 570, not 580"),
        (OPEN_570, "570", "proprietary", "", False, "open kernel modules, not the proprietary"),
        (OPEN_570, "570", "open", "570.195.03", True, "already matches"),
        (OPEN_570, "570", "open", "570.172.08", False, "not the requested version 570.172.08"),
        (None, "570", "open", "", False, "no NVIDIA kernel module"),
        # NVML reports no flavour: the branch alone decides.
        (nd.LoadedDriver("570.195.03", "570", None), "570", "proprietary", "", True, "flavour unknown"),
    ],
)
def test_driver_matches(loaded, branch, flavour, version, matches, reason_part):
    result, reason = nd.driver_matches(loaded, branch, flavour, version)
    assert result is matches
    assert reason_part in reason


@pytest.mark.parametrize(
    ("installed", "loaded", "expected"),
    [
        (None, None, False),  # nothing from packages: nothing to reboot for
        (None, OPEN_570, False),  # runfile-installed driver
        ("570.195.03", OPEN_570, False),
        ("570.211.01", OPEN_570, True),  # upgraded, old module still loaded
        ("570.195.03", None, True),  # fresh install
    ],
)
def test_reboot_required_when_installed_differs_from_loaded(installed, loaded, expected):
    assert nd.reboot_required(installed, loaded) is expected


# --- Secure Boot ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "state"),
    [
        ("enabled.txt", nd.SECURE_BOOT_ENABLED),
        ("disabled.txt", nd.SECURE_BOOT_DISABLED),
        ("enabled_validation_disabled_in_shim.txt", nd.SECURE_BOOT_DISABLED),
        ("disabled_setup_mode.txt", nd.SECURE_BOOT_DISABLED),
        ("not_supported.txt", nd.SECURE_BOOT_DISABLED),
        # No efivarfs: legacy BIOS or efivarfs not mounted; mokutil alone cannot tell which.
        ("efi_variables_not_supported.txt", None),
    ],
)
def test_mokutil_sb_state(fixture, state):
    assert nd.parse_mokutil_sb_state((FIXTURES / "mokutil" / fixture).read_text()) == state


@pytest.mark.parametrize(
    ("efi_booted", "readable", "secure_boot", "setup_mode", "mok_sb_state", "state"),
    [
        (False, False, None, None, None, nd.SECURE_BOOT_DISABLED),
        (True, False, None, None, None, nd.SECURE_BOOT_UNKNOWN),
        (True, True, efivar(1), efivar(0), None, nd.SECURE_BOOT_ENABLED),
        (True, True, efivar(0), efivar(0), None, nd.SECURE_BOOT_DISABLED),
        (True, True, efivar(1), efivar(1), None, nd.SECURE_BOOT_DISABLED),
        (True, True, efivar(1), efivar(0), efivar(1), nd.SECURE_BOOT_DISABLED),
        (True, True, None, None, None, nd.SECURE_BOOT_DISABLED),
        (True, True, b"\x06\x00", None, None, nd.SECURE_BOOT_DISABLED),
    ],
)
def test_secure_boot_from_efivars_follows_mokutil(efi_booted, readable, secure_boot, setup_mode, mok_sb_state, state):
    assert nd.secure_boot_from_efivars(efi_booted, readable, secure_boot, setup_mode, mok_sb_state) == state


def test_secure_boot_read_from_an_efivarfs_tree(tmp_path):
    efivars = tmp_path / "sys" / "firmware" / "efi" / "efivars"
    efivars.mkdir(parents=True)
    (efivars / ("SecureBoot-" + nd.EFI_GLOBAL_GUID)).write_bytes(efivar(1))
    (efivars / ("SetupMode-" + nd.EFI_GLOBAL_GUID)).write_bytes(efivar(0))
    assert nd.read_secure_boot_from_efivars(str(tmp_path / "sys")) == nd.SECURE_BOOT_ENABLED

    (efivars / ("MokSBStateRT-" + nd.SHIM_LOCK_GUID)).write_bytes(efivar(1))
    assert nd.read_secure_boot_from_efivars(str(tmp_path / "sys")) == nd.SECURE_BOOT_DISABLED


def test_bios_boot_has_no_secure_boot(tmp_path):
    (tmp_path / "sys").mkdir()
    assert nd.read_secure_boot_from_efivars(str(tmp_path / "sys")) == nd.SECURE_BOOT_DISABLED


@pytest.mark.parametrize(
    ("state", "install_needed", "signed", "blocks"),
    [
        (nd.SECURE_BOOT_ENABLED, True, False, True),
        (nd.SECURE_BOOT_UNKNOWN, True, False, True),
        (nd.SECURE_BOOT_ENABLED, True, True, False),
        (nd.SECURE_BOOT_ENABLED, False, False, False),
        (nd.SECURE_BOOT_DISABLED, True, False, False),
    ],
)
def test_secure_boot_blocks_only_an_unsigned_install(state, install_needed, signed, blocks):
    assert nd.secure_boot_blocks_install(state, install_needed, signed) is blocks


# --- Platforms, repositories, packages ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("distribution", "version", "architecture", "expected"),
    [
        ("Ubuntu", "22.04", "x86_64", UBUNTU_2204),
        ("Ubuntu", "24.04", "x86_64", UBUNTU_2404),
        ("Rocky", "9.4", "x86_64", RHEL_9),
        ("RedHat", "9.5", "x86_64", nd.Platform("redhat", "rhel9", "RedHat 9.5")),
        ("AlmaLinux", "9.4", "x86_64", nd.Platform("redhat", "rhel9", "AlmaLinux 9.4")),
        ("CentOS", "9", "x86_64", nd.Platform("redhat", "rhel9", "CentOS 9")),
        ("Ubuntu", "20.04", "x86_64", None),
        ("Debian", "12.8", "x86_64", None),  # the sandbox
        ("Rocky", "8.10", "x86_64", None),
        ("Fedora", "40", "x86_64", None),  # os_family RedHat, but no rhel9 repository
        ("OracleLinux", "9.4", "x86_64", None),  # UEK kernels need kernel-uek-devel
        ("Ubuntu", "22.04", "aarch64", None),
    ],
)
def test_cuda_platform(distribution, version, architecture, expected):
    assert nd.cuda_platform(distribution, version, architecture) == expected


def test_repo_url_per_platform():
    base = nd.DEFAULT_REPO_BASE_URL
    assert (
        nd.repo_url(base, UBUNTU_2204) == "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/"
    )
    assert nd.repo_url(base + "/", UBUNTU_2404) == (
        "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64/"
    )
    assert nd.repo_url("http://mirror.example/cuda", RHEL_9) == "http://mirror.example/cuda/rhel9/x86_64/"


@pytest.mark.parametrize(
    ("platform", "branch", "flavour", "version", "packages"),
    [
        (UBUNTU_2204, "570", "open", "", ["nvidia-open-570"]),
        (UBUNTU_2204, "570", "proprietary", "", ["cuda-drivers-570"]),
        (UBUNTU_2404, "580", "open", "580.95.05", ["nvidia-open-580=580.95.05-*"]),
        (UBUNTU_2404, "590", "open", "", ["nvidia-open"]),
        (UBUNTU_2404, "590", "proprietary", "", ["cuda-drivers"]),
        (RHEL_9, "570", "open", "", ["@nvidia-driver:570-open"]),
        (RHEL_9, "580", "proprietary", "", ["@nvidia-driver:580-dkms"]),
    ],
)
def test_driver_packages(platform, branch, flavour, version, packages):
    assert nd.driver_packages(platform, branch, flavour, version) == packages


@pytest.mark.parametrize(
    ("platform", "branch", "packages"),
    [
        (UBUNTU_2204, "570", []),
        (UBUNTU_2204, "580", ["nvidia-driver-pinning-580"]),
        (UBUNTU_2404, "590", ["nvidia-driver-pinning-590"]),
        (RHEL_9, "580", []),  # the module stream already holds the branch
    ],
)
def test_pin_packages(platform, branch, packages):
    assert nd.pin_packages(platform, branch) == packages


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: nd.driver_packages(UBUNTU_2204, "57", "open"), "three digits"),
        (lambda: nd.driver_packages(UBUNTU_2204, "570", "closed"), "flavour must be one of open, proprietary"),
        (lambda: nd.driver_packages(UBUNTU_2204, "570", "open", "580.95.05"), "not on branch 570"),
        (lambda: nd.driver_packages(RHEL_9, "570", "open", "570.172.08"), "only be pinned on Ubuntu"),
    ],
)
def test_driver_packages_reject_impossible_requests(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_kernel_packages_match_the_running_kernel():
    assert nd.kernel_packages(UBUNTU_2204, "5.15.0-127-generic") == ["linux-headers-5.15.0-127-generic", "dkms"]
    assert nd.kernel_packages(RHEL_9, "5.14.0-427.13.1.el9_4.x86_64") == [
        "kernel-devel-5.14.0-427.13.1.el9_4.x86_64",
        "kernel-headers",
        "dkms",
    ]


@pytest.mark.parametrize(
    ("platform", "version", "packages"),
    [
        (UBUNTU_2204, "570.195.03", ["nvidia-fabricmanager-570=570.195.03-*", "libnvidia-nscq-570=570.195.03-*"]),
        (UBUNTU_2404, "580.95.05", ["nvidia-fabricmanager=580.95.05-*", "libnvidia-nscq=580.95.05-*"]),
        (RHEL_9, "570.172.08", ["nvidia-fabric-manager-570.172.08", "libnvidia-nscq-570-570.172.08"]),
        (RHEL_9, "580.95.05", ["nvidia-fabricmanager-580.95.05", "libnvidia-nscq-580.95.05"]),
    ],
)
def test_fabric_manager_packages_pin_the_exact_driver_version(platform, version, packages):
    assert nd.fabric_manager_packages(platform, version) == packages


def test_fabric_manager_follows_the_installed_driver_over_the_loaded_one():
    assert nd.fabric_manager_version("570.211.01", OPEN_570) == "570.211.01"
    assert nd.fabric_manager_version(None, OPEN_570) == "570.195.03"
    assert nd.fabric_manager_version(None, None) is None


def test_installed_version_packages_name_the_core_library_first():
    assert nd.installed_version_packages(UBUNTU_2204, "570")[0] == "libnvidia-compute-570"
    assert nd.installed_version_packages(UBUNTU_2404, "590")[0] == "libnvidia-compute"
    assert nd.installed_version_packages(RHEL_9, "570")[0] == "nvidia-driver-cuda-libs"


def test_dnf_module_state_gives_the_enabled_stream():
    text = (FIXTURES / "dnf_nvidia-driver.module").read_text()
    assert nd.parse_dnf_module_state(text) == "570-open"
    assert nd.parse_dnf_module_state(text.replace("state=enabled", "state=disabled")) is None
    assert nd.parse_dnf_module_state("") is None
    assert nd.parse_dnf_module_state("not an ini file") is None
    assert nd.redhat_module_stream("580", "proprietary") == "580-dkms"


# --- Control node ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("connection", "hostname", "ansible_host", "host_id", "controller_id", "expected"),
    [
        ("local", "gpu-node-1", None, None, None, True),
        ("ssh", "localhost", None, None, None, True),
        ("ssh", "gpu-node-1", "127.0.0.1", None, None, True),
        ("ssh", "gpu-node-1", "::1", None, None, True),
        ("ssh", "gpu-node-1", "10.0.0.11", "4c4c4544004b", "4c4c4544004b", True),
        ("ssh", "gpu-node-1", "10.0.0.11", "4c4c4544004b", "9e0f3b1a77d2", False),
        ("ssh", "gpu-node-1", "10.0.0.11", None, None, False),
    ],
)
def test_is_control_node(connection, hostname, ansible_host, host_id, controller_id, expected):
    result, reason = nd.is_control_node(connection, hostname, ansible_host, host_id, controller_id)
    assert result is expected
    assert reason


# --- The whole decision ---------------------------------------------------------------------------


def state_for(tmp_path, **overrides):
    return hgx_h100_driver_state(tmp_path, **overrides)


def test_fresh_hgx_host_needs_the_driver_and_fabric_manager_later(tmp_path):
    state = state_for(tmp_path)

    assert state["gpu_present"] and state["nvswitch_present"] and state["infiniband_present"]
    assert state["install_needed"]
    assert state["keyring_url"] == (
        "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/cuda-keyring_1.1-1_all.deb"
    )
    assert state["driver_packages"] == ["nvidia-open-570"]
    assert state["kernel_packages"] == ["linux-headers-5.15.0-127-generic", "dkms"]
    # No driver version known before installing: fabric manager waits for the post-install reading.
    assert state["fabric_manager_version"] is None
    assert state["fabric_manager_packages"] == []
    assert not state["reboot_required"]


def test_after_install_the_host_needs_a_reboot_and_matching_fabric_manager(tmp_path):
    state = state_for(tmp_path, installed_package_version="570.195.03-0ubuntu1")

    assert state["reboot_required"]
    assert state["installed_driver_version"] == "570.195.03"
    assert state["fabric_manager_packages"] == [
        "nvidia-fabricmanager-570=570.195.03-*",
        "libnvidia-nscq-570=570.195.03-*",
    ]


def test_matching_host_needs_nothing(tmp_path):
    state = state_for(tmp_path, loaded=OPEN_570, installed_package_version="570.195.03-0ubuntu1")

    assert not state["install_needed"]
    assert not state["reboot_required"]
    assert not state["secure_boot_blocks_install"]


def test_secure_boot_blocks_a_fresh_install_unless_signed(tmp_path):
    enabled = {"state": nd.SECURE_BOOT_ENABLED, "source": "mokutil", "detail": "SecureBoot enabled"}
    assert state_for(tmp_path / "a", secure_boot=enabled)["secure_boot_blocks_install"]
    assert not state_for(tmp_path / "b", secure_boot=enabled, secure_boot_signed=True)["secure_boot_blocks_install"]


def test_nvswitch_reported_by_gpu_facts_counts_without_sysfs(tmp_path):
    workstation = nd.read_pci_devices(str(materialize_sysfs(FIXTURES / "pci_workstation_rtx4090.txt", tmp_path)))
    assert not state_for(tmp_path, pci_devices=workstation)["nvswitch_present"]
    assert state_for(tmp_path, pci_devices=workstation, reported_nvswitch_present=True)["nvswitch_present"]


def test_rhel_switching_streams_needs_a_module_reset(tmp_path):
    state = state_for(tmp_path, platform=RHEL_9, branch="580", redhat_enabled_stream="570-open")

    assert state["redhat_module_stream"] == "580-open"
    assert state["redhat_module_reset_needed"]
    assert state["gpg_key_url"] == "https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64/D42D0685.pub"
    assert state["keyring_url"] is None
    assert state["kernel_packages"][0] == "kernel-devel-5.15.0-127-generic"
    assert not state_for(tmp_path / "same", platform=RHEL_9, redhat_enabled_stream="570-open")[
        "redhat_module_reset_needed"
    ]


def test_unsupported_platform_still_reports_the_hardware(tmp_path):
    state = state_for(tmp_path, platform=None)

    assert state["platform"] is None
    assert state["gpu_present"]
    assert state["driver_packages"] == []
    assert "Ubuntu 22.04 (x86_64)" in state["supported_platforms"]
