# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nvidia_driver_facts run by ansible-core itself on localhost, reading captured host trees."""

from __future__ import annotations

from pathlib import Path

import pytest
from adhoc import run_module as run_adhoc

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "nvidia_driver"

UBUNTU_2204 = {
    "distribution": "Ubuntu",
    "distribution_version": "22.04",
    "architecture": "x86_64",
    "kernel": "5.15.0-127-generic",
}


def run_module(arguments: dict, check: bool = False) -> dict:
    return run_adhoc("nvidia_driver_facts", arguments, check)


def write_host_tree(root: Path, pci_listing: str, proc_version: str | None = None) -> Path:
    """A host as the module sees it: sysfs PCI devices, /proc/driver/nvidia/version, /etc/machine-id."""
    for line in (FIXTURES / pci_listing).read_text().splitlines():
        if line and not line.startswith("#"):
            path, _separator, value = line.partition(":0x")
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("0x" + value + "\n")
    if proc_version:
        version_file = root / "proc" / "driver" / "nvidia" / "version"
        version_file.parent.mkdir(parents=True)
        version_file.write_text((FIXTURES / "proc_version" / proc_version).read_text())
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "machine-id").write_text("5f1c0e2a9b3d4e6f8a7b6c5d4e3f2a1b\n")
    return root


def facts_of(result: dict) -> dict:
    assert not result["_failed"], result
    assert result["changed"] is False
    return result["ansible_facts"]["llmserve_nvidia_driver"]


def test_fresh_hgx_h100_with_infiniband_and_secure_boot_on(tmp_path):
    root = write_host_tree(tmp_path, "pci_hgx_h100.txt")
    for name in ("mlx5_0", "mlx5_1"):
        (root / "sys" / "class" / "infiniband" / name).mkdir(parents=True)
    efivars = root / "sys" / "firmware" / "efi" / "efivars"
    efivars.mkdir(parents=True)
    (efivars / "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c").write_bytes(b"\x06\x00\x00\x00\x01")
    (efivars / "SetupMode-8be4df61-93ca-11d2-aa0d-00e098032b8c").write_bytes(b"\x06\x00\x00\x00\x00")

    facts = facts_of(run_module({"branch": "570", "root": str(root), **UBUNTU_2204}, check=True))

    assert len(facts["gpus"]) == 8
    assert [s["pci_address"] for s in facts["nvswitches"]] == [
        "0000:bd:00.0",
        "0000:be:00.0",
        "0000:bf:00.0",
        "0000:c0:00.0",
    ]
    assert facts["infiniband_devices"] == ["mlx5_0", "mlx5_1"]
    assert facts["loaded_driver"] is None
    assert facts["install_needed"] is True
    assert facts["secure_boot"] == {"state": "enabled", "source": "efivars", "detail": None}
    assert facts["secure_boot_blocks_install"] is True
    assert facts["platform"] == {"family": "debian", "repo_distro": "ubuntu2204", "label": "Ubuntu 22.04"}
    assert facts["driver_packages"] == ["nvidia-open-570"]
    assert facts["kernel_packages"] == ["linux-headers-5.15.0-127-generic", "dkms"]


def test_hgx_h100_running_the_wanted_driver_needs_nothing_but_fabric_manager(tmp_path):
    root = write_host_tree(tmp_path, "pci_hgx_h100.txt", "open_570.195.03_ubuntu2204.txt")

    facts = facts_of(run_module({"branch": "570", "root": str(root), **UBUNTU_2204}))

    assert facts["loaded_driver"] == {"version": "570.195.03", "branch": "570", "flavour": "open"}
    assert facts["install_needed"] is False
    assert facts["secure_boot_blocks_install"] is False
    # BIOS boot in this tree (no /sys/firmware/efi): no Secure Boot.
    assert facts["secure_boot"]["state"] == "disabled"
    assert facts["fabric_manager_packages"] == [
        "nvidia-fabricmanager-570=570.195.03-*",
        "libnvidia-nscq-570=570.195.03-*",
    ]
    assert facts["reboot_required"] is False


def test_branch_change_on_rhel_needs_install_and_stream_reset(tmp_path):
    root = write_host_tree(tmp_path, "pci_workstation_rtx4090.txt", "open_555.58.02_redhat.txt")
    modules_d = root / "etc" / "dnf" / "modules.d"
    modules_d.mkdir(parents=True)
    (modules_d / "nvidia-driver.module").write_text(
        (FIXTURES / "dnf_nvidia-driver.module").read_text().replace("570-open", "555-open")
    )
    arguments = {
        "branch": "570",
        "root": str(root),
        "distribution": "Rocky",
        "distribution_version": "9.4",
        "architecture": "x86_64",
        "kernel": "5.14.0-427.13.1.el9_4.x86_64",
    }

    facts = facts_of(run_module(arguments))

    assert facts["install_reason"] == "loaded driver 555.58.02 is on branch 555, not 570"
    assert facts["nvswitch_present"] is False
    assert facts["driver_packages"] == ["@nvidia-driver:570-open"]
    assert facts["redhat_enabled_stream"] == "555-open"
    assert facts["redhat_module_reset_needed"] is True
    assert facts["repo_url"] == "https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64/"


def test_controller_recognised_by_machine_id(tmp_path):
    root = write_host_tree(tmp_path, "pci_hgx_h100.txt")
    arguments = {"branch": "570", "root": str(root), "connection": "ssh", "inventory_hostname": "gpu-1", **UBUNTU_2204}

    same = facts_of(run_module({**arguments, "controller_machine_id": "5f1c0e2a9b3d4e6f8a7b6c5d4e3f2a1b"}))
    other = facts_of(run_module({**arguments, "controller_machine_id": "0123456789abcdef0123456789abcdef"}))

    assert same["control_node"] is True
    assert same["control_node_reason"] == "/etc/machine-id equals the controller's"
    assert other["control_node"] is False


def test_cpu_only_vm_on_debian_is_unsupported_and_has_no_gpu(tmp_path):
    root = write_host_tree(tmp_path, "pci_kvm_guest_no_gpu.txt")
    arguments = {
        "branch": "570",
        "root": str(root),
        "distribution": "Debian",
        "distribution_version": "12.8",
        "architecture": "x86_64",
        "kernel": "6.1.0-28-cloud-amd64",
    }

    facts = facts_of(run_module(arguments))

    assert facts["gpu_present"] is False
    assert facts["platform"] is None
    assert facts["driver_packages"] == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"branch": "57"}, "three digits"),
        ({"branch": "570", "version": "580.95.05"}, "not on branch 570"),
        ({"branch": "570", "flavour": "closed"}, "value of flavour must be one of: open, proprietary"),
    ],
)
def test_impossible_requests_fail_with_the_reason(tmp_path, arguments, message):
    root = write_host_tree(tmp_path, "pci_hgx_h100.txt")
    result = run_module({**arguments, "root": str(root), **UBUNTU_2204})

    assert result["_failed"]
    assert message in result["msg"]
