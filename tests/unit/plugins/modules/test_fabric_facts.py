# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import json

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args

from ansible_collections.llmserve.cluster.plugins.modules import fabric_facts


@pytest.fixture
def run_module(monkeypatch, capsys, host_tree):
    """Run fabric_facts on a captured host; returns (exit code, result)."""

    def run(case, ip_result=None, **options):
        return _run(monkeypatch, capsys, host_tree(case), ip_result, options)

    return run


def _run(monkeypatch, capsys, root, ip_result, options):
    ran = []

    def run_command(self, args, **kwargs):
        ran.append(args[1:])
        return ip_result or (0, (root / "ip_addr.json").read_text(), "")

    # The host's own `ip -json addr show` is replaced by the capture taken on the fixture host.
    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    args = {"sysfs_root": str(root / "sys"), "proc_root": str(root / "proc"), "dev_root": str(root / "dev")}
    args.update(options)
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        fabric_facts.main()
    assert ran == [["-json", "addr", "show"]]
    return exited.value.code, json.loads(capsys.readouterr().out)


def test_module_sets_the_fabric_fact(run_module):
    rc, result = run_module("ib_8x_one_down", env_overrides={"NCCL_DEBUG": "WARN"})

    assert rc == 0
    assert result["changed"] is False
    facts = result["ansible_facts"]["llmserve_fabric"]
    assert facts["cluster_interface"] == "eno1"
    assert facts["recommended_env"]["NCCL_IB_HCA"].startswith("=mlx5_0:1,")
    assert facts["recommended_env"]["NCCL_DEBUG"] == "WARN"


def test_unknown_cluster_interface_fails_naming_the_inventory_variable(run_module):
    rc, result = run_module("ethernet_plain", cluster_interface="ens5")

    assert rc == 1
    assert result["failed"] is True
    assert result["msg"].startswith("llmserve_cluster_interface is 'ens5' but this host has no such interface")
    assert "eno1 (10.10.1.21/24" in result["msg"]


def test_old_iproute2_without_json_fails_clearly(run_module):
    rc, result = run_module("ethernet_plain", ip_result=(255, "", 'Option "-json" is unknown'))

    assert rc == 1
    assert "iproute2 4.13 or later" in result["msg"]
