# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/drivers.yml and the nvidia_driver role run by ansible-playbook on this CPU-only machine.

No GPU here, so the first runs show the paths that must not touch a host: the role switched off
(sandbox hosts, drivers managed elsewhere) and a host without an NVIDIA GPU. The later runs point
nvidia_driver_facts at a captured HGX H100 tree (through module_defaults) and give the play an
Ubuntu 22.04 identity, so the role's GPU paths run for real up to what --check can show.
Every run with the role switched on uses --check, so a machine that has a GPU is not changed either.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._nvidia_driver import nvidia_gpus, read_pci_devices

REPO_ROOT = Path(__file__).resolve().parents[3]
COLLECTIONS_ROOT = REPO_ROOT / ".build" / "collections"
PLAYBOOK = REPO_ROOT / "playbooks" / "drivers.yml"
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")


@pytest.fixture(scope="module")
def inventory(tmp_path_factory):
    assert not nvidia_gpus(read_pci_devices("/sys")), "these runs expect a machine without NVIDIA GPUs"
    path = tmp_path_factory.mktemp("inventory") / "hosts.yml"
    path.write_text(
        json.dumps(
            {
                "llmserve_cluster": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": sys.executable,
                            # The play asks for become; this machine runs the tests as root without sudo.
                            "ansible_become": False,
                        }
                    }
                }
            }
        )
    )
    return path


class Run:
    """What ansible-playbook printed: the recap numbers and each task's status lines."""

    def __init__(self, stdout: str):
        self.stdout = stdout
        recap = re.search(r"^localhost\s*:\s*(.*)$", stdout, re.MULTILINE)
        assert recap, stdout
        self.stats = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", recap.group(1))}
        self.tasks = {}
        for block in re.split(r"^TASK \[", stdout, flags=re.MULTILINE)[1:]:
            header, _separator, body = block.partition("\n")
            name = header.split("]", 1)[0].split(" : ", 1)[-1]
            self.tasks[name] = body

    def ran(self) -> set:
        """Tasks that ran (ok, changed or failed) rather than being skipped."""
        return {name for name, body in self.tasks.items() if re.search(r"^(ok|changed|fatal):", body, re.MULTILINE)}


def run_playbook(inventory: Path, *arguments: str, playbook: Path = PLAYBOOK, library: Path | None = None) -> Run:
    environment = dict(
        os.environ,
        ANSIBLE_LIBRARY=str(library or ""),
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS_ROOT),
        ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"),
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_DISPLAY_SKIPPED_HOSTS="true",
    )
    command = [ANSIBLE_PLAYBOOK, "-i", str(inventory), str(playbook), *arguments]
    completed = subprocess.run(
        command, capture_output=True, text=True, env=environment, timeout=300, cwd=REPO_ROOT, check=False
    )
    return Run(completed.stdout + completed.stderr)


@pytest.mark.parametrize("mode", [[], ["--check", "--diff"]])
def test_switched_off_role_changes_nothing(inventory, mode):
    run = run_playbook(inventory, "-e", "nvidia_driver_enabled=false", *mode)

    assert (run.stats["changed"], run.stats["failed"], run.stats["unreachable"]) == (0, 0, 0), run.stdout
    # Only reading tasks: the llmserve and nvidia_driver argument validation and the message (the play gathers no
    # facts; the llmserve role's debug line is below its verbosity and skipped).
    assert {name.split(" - ")[0] for name in run.ran()} == {
        "Validating arguments against arg spec 'main'",
        "Leave the driver alone on hosts where it is managed elsewhere",
    }


def test_host_without_gpu_fails_clearly(inventory):
    run = run_playbook(inventory, "--check")

    assert run.stats["failed"] == 1, run.stdout
    assert run.stats["changed"] == 0
    assert "fatal:" in run.tasks["Fail on a host without an NVIDIA GPU"]
    assert "has no NVIDIA GPU" in run.stdout
    assert "nvidia_driver_require_gpu: false" in run.stdout


def test_host_without_gpu_is_skipped_when_no_gpu_is_required(inventory):
    run = run_playbook(inventory, "--check", "--diff", "-e", "nvidia_driver_require_gpu=false")

    assert (run.stats["changed"], run.stats["failed"]) == (0, 0), run.stdout
    assert "Read the GPUs, the loaded driver and Secure Boot, and decide what the driver needs" in run.ran()
    # Everything after the preflight's reading is gated on a GPU being present.
    assert not run.ran() & {"Add NVIDIA's repository and install the driver", "Keep nouveau from claiming the GPUs"}


# --- The GPU paths, on a captured HGX H100 tree --------------------------------------------------------

FIXTURES = REPO_ROOT / "tests" / "unit" / "fixtures" / "nvidia_driver"

# Stands in for fact gathering: the play must look like an Ubuntu or RHEL host on this Debian machine.
IDENTITY_MODULE = """#!/usr/bin/python
from ansible.module_utils.basic import AnsibleModule
module = AnsibleModule(argument_spec=dict(facts=dict(type="dict", required=True)), supports_check_mode=True)
module.exit_json(changed=False, ansible_facts=module.params["facts"])
"""

HGX_PLAY = """
- name: The nvidia_driver role against a captured host tree
  hosts: llmserve_cluster
  gather_facts: false
  module_defaults:
    llmserve.cluster.nvidia_driver_facts:
      root: "{{ host_tree }}"
  # As in every play of the collection: the shared settings (llmserve_allow_reboot, llmserve_units, ...).
  roles:
    - role: llmserve.cluster.llmserve
  tasks:
    - name: Take the identity of the host under test
      host_identity:
        facts: "{{ identity }}"
    - name: Run the role
      ansible.builtin.include_role:
        name: llmserve.cluster.nvidia_driver
"""

UBUNTU = {
    "distribution": "Ubuntu",
    "distribution_version": "22.04",
    "os_family": "Debian",
    "architecture": "x86_64",
    # linux-headers-<kernel> must resolve in this machine's apt cache for the check-mode install.
    "kernel": "amd64",
}


@pytest.fixture
def hgx(tmp_path):
    """Write the play, the identity module, a local stand-in for the CUDA repository and an HGX H100 tree."""
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "host_identity.py").write_text(IDENTITY_MODULE)
    (tmp_path / "play.yml").write_text(HGX_PLAY)
    package = tmp_path / "keyring" / "DEBIAN"
    package.mkdir(parents=True)
    (package / "control").write_text(
        "Package: cuda-keyring\nVersion: 1.1-1\nArchitecture: all\nMaintainer: tests <tests@example.invalid>\n"
        "Description: stand-in for NVIDIA's cuda-keyring\n"
    )
    repo = tmp_path / "repo" / "ubuntu2204" / "x86_64"
    repo.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "--build", str(package.parent), str(repo / "cuda-keyring_1.1-1_all.deb")], check=True)
    root = tmp_path / "host"
    for line in (FIXTURES / "pci_hgx_h100.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            path, _separator, value = line.partition(":0x")
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("0x" + value + "\n")
    for name in ("mlx5_0", "mlx5_1"):
        (root / "sys" / "class" / "infiniband" / name).mkdir(parents=True)
    return tmp_path


def run_on_hgx(inventory: Path, hgx: Path, identity: dict, **variables) -> Run:
    extra = {
        "host_tree": str(hgx / "host"),
        "identity": identity,
        "nvidia_driver_repo_base_url": (hgx / "repo").as_uri(),
        **variables,
    }
    return run_playbook(
        inventory, "--check", "--diff", "-e", json.dumps(extra), playbook=hgx / "play.yml", library=hgx / "library"
    )


def load_driver(hgx: Path, fixture: str) -> None:
    version_file = hgx / "host" / "proc" / "driver" / "nvidia" / "version"
    version_file.parent.mkdir(parents=True, exist_ok=True)
    version_file.write_text((FIXTURES / "proc_version" / fixture).read_text())


def turn_on_secure_boot(hgx: Path) -> None:
    efivars = hgx / "host" / "sys" / "firmware" / "efi" / "efivars"
    efivars.mkdir(parents=True)
    (efivars / "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c").write_bytes(b"\x06\x00\x00\x00\x01")
    (efivars / "SetupMode-8be4df61-93ca-11d2-aa0d-00e098032b8c").write_bytes(b"\x06\x00\x00\x00\x00")


def test_fresh_host_that_is_the_controller_is_refused(inventory, hgx):
    run = run_on_hgx(inventory, hgx, UBUNTU)

    assert run.stats["failed"] == 1, run.stdout
    assert "fatal:" in run.tasks["Fail when the driver would change on the control node"]
    assert "is the control node (ansible_connection is local)" in run.stdout
    assert "no NVIDIA kernel module is loaded" in run.stdout


def test_secure_boot_stops_an_unsigned_install(inventory, hgx):
    turn_on_secure_boot(hgx)

    run = run_on_hgx(inventory, hgx, UBUNTU, nvidia_driver_reboot=False)

    assert run.stats["failed"] == 1, run.stdout
    assert "fatal:" in run.tasks["Fail when Secure Boot would refuse the unsigned kernel module"]
    assert "Secure Boot is enabled" in run.stdout
    assert "nvidia_driver_secure_boot_signed: true" in run.stdout
    assert "changed: [localhost]" not in run.stdout


def test_fresh_host_with_signed_modules_previews_the_install(inventory, hgx):
    turn_on_secure_boot(hgx)

    run = run_on_hgx(inventory, hgx, UBUNTU, nvidia_driver_reboot=False, nvidia_driver_secure_boot_signed=True)

    assert run.stats["failed"] == 0, run.stdout
    for task in (
        "Add NVIDIA's CUDA repository and signing key with the cuda-keyring package",
        "Install kernel headers for the running kernel and DKMS",
        "Keep nouveau from claiming the GPUs",
        "Load nvidia-peermem at every boot for GPUDirect RDMA",
        "Run nvidia-persistenced with persistence mode on",
    ):
        assert "changed:" in run.tasks[task], task
    # Without the repository (check mode adds nothing), the driver and fabric manager are only announced.
    assert "skipping:" in run.tasks["Install the NVIDIA driver packages nvidia-open-570"]
    assert "+blacklist nouveau" in run.stdout
    assert "+ExecStart=/usr/bin/nvidia-persistenced --persistence-mode --verbose" in run.stdout


def test_host_already_running_the_branch_keeps_its_driver(inventory, hgx):
    load_driver(hgx, "open_570.195.03_ubuntu2204.txt")

    # Persistence off: its drop-in would notify a restart, and this machine has no systemd to ask.
    run = run_on_hgx(
        inventory, hgx, UBUNTU, nvidia_driver_fabric_manager_enabled=False, nvidia_driver_persistence_enabled=False
    )

    assert run.stats["failed"] == 0, run.stdout
    # Matching driver and no fabric manager wanted: the repository is not even touched.
    assert "Add NVIDIA's repository and install the driver" not in run.ran()
    assert "Add NVIDIA's CUDA repository and signing key with the cuda-keyring package" not in run.tasks
    assert "Decide whether this host reboots now" in run.ran()
    assert "Schedule the reboot of a host that serves nothing" not in run.ran()
    assert "Record the reboot left to do, for deploy.yml and status.yml to report" not in run.ran()


def test_other_branch_loaded_means_an_install(inventory, hgx):
    load_driver(hgx, "proprietary_535.216.03.txt")

    run = run_on_hgx(inventory, hgx, UBUNTU, nvidia_driver_reboot=False)

    assert run.stats["failed"] == 0, run.stdout
    assert "changed:" in run.tasks["Add NVIDIA's CUDA repository and signing key with the cuda-keyring package"]
    assert "Install the NVIDIA driver packages nvidia-open-570" in run.tasks


def test_unsupported_distribution_is_named_with_the_supported_list(inventory, hgx):
    run = run_on_hgx(inventory, hgx, {**UBUNTU, "distribution": "Debian", "distribution_version": "12.8"})

    assert run.stats["failed"] == 1, run.stdout
    assert "fatal:" in run.tasks["Fail on an operating system the role does not support"]
    assert "nvidia_driver supports Ubuntu 22.04 (x86_64); Ubuntu 24.04 (x86_64); RHEL 9 family" in run.stdout
    assert "runs Debian 12.8 (x86_64)" in run.stdout


def test_exact_version_on_rhel_is_refused(inventory, hgx):
    rocky = {**UBUNTU, "distribution": "Rocky", "distribution_version": "9.4", "os_family": "RedHat"}

    run = run_on_hgx(inventory, hgx, rocky, nvidia_driver_version="570.172.08")

    assert run.stats["failed"] == 1, run.stdout
    assert "fatal:" in run.tasks["Fail on an exact driver version where only a branch can be followed"]
    assert "nvidia-driver:570-open" in run.stdout
