# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Rebuild a captured host's /sys, /proc and /dev under a temporary directory.

The captures keep every sysfs attribute as a plain file, but PCI device directories
("0000:19:00.0") and the ``device`` symlinks pointing at them are listed in
``pci_devices.json`` instead: colons and symlinks are not allowed in the collection's
files (ansible-test sanity ``no-illegal-filenames``/``symlinks``). This builder puts them
back the way the kernel lays them out, with relative links as on a real host.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

SYSFS_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sysfs"


def build_host(case: str, destination: Path) -> Path:
    """Copy capture ``case`` to ``destination/case`` with its PCI devices and links restored."""
    root = destination / case
    shutil.copytree(SYSFS_FIXTURES / case, root)
    manifest = json.loads((root / "pci_devices.json").read_text())
    devices = {}
    for address, device in manifest["pci_devices"].items():
        path = root / "sys" / "devices" / device["path"]
        path.mkdir(parents=True)
        (path / "numa_node").write_text(f"{device['numa_node']}\n")
        devices[address] = path
    for link, address in manifest["device_links"].items():
        link_path = root / link
        os.symlink(os.path.relpath(devices[address], link_path.parent), link_path)
    return root


def ip_addresses(root: Path) -> list:
    return json.loads((root / "ip_addr.json").read_text())


def materialize_sysfs(listing: Path, root: Path) -> Path:
    """Rebuild a ``grep . /sys/bus/pci/devices/*/{vendor,device,class}`` capture as a tree under root."""
    for line in listing.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        path, _separator, value = line.partition(":0x")
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("0x" + value + "\n")
    return root / "sys"


def hgx_h100_driver_state(root: Path, **overrides):
    """nvidia_driver's ``build_state`` for the captured HGX H100 host (Ubuntu 22.04, two HCAs, Secure Boot off,
    not the controller) with no driver loaded or installed; ``overrides`` replace any of its arguments."""
    from ansible_collections.llmserve.cluster.plugins.module_utils import _nvidia_driver as nd

    listing = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia_driver" / "pci_hgx_h100.txt"
    arguments = dict(
        branch="570",
        flavour="open",
        version="",
        repo_base_url=nd.DEFAULT_REPO_BASE_URL,
        secure_boot_signed=False,
        platform=nd.Platform("debian", "ubuntu2204", "Ubuntu 22.04"),
        kernel_release="5.15.0-127-generic",
        pci_devices=nd.read_pci_devices(str(materialize_sysfs(listing, root))),
        infiniband=["mlx5_0", "mlx5_1"],
        peermem_loaded=False,
        loaded=None,
        installed_package_version=None,
        secure_boot={"state": nd.SECURE_BOOT_DISABLED, "source": "mokutil", "detail": "SecureBoot disabled"},
        control_node=(False, "a different machine from the controller"),
        reported_nvswitch_present=None,
        redhat_enabled_stream=None,
    )
    arguments.update(overrides)
    return nd.build_state(**arguments)
