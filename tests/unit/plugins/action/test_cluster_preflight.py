# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
from ansible.errors import AnsibleActionFail

from ansible_collections.llmserve.cluster.plugins.action.cluster_preflight import ActionModule
from ansible_collections.llmserve.cluster.plugins.module_utils._fabric_probe import probe_fabric
from ansible_collections.llmserve.cluster.plugins.module_utils._gpu_probe import probe_gpus


@pytest.fixture
def host_facts(host_tree, nvml_replay):
    """hostvars of a node whose gpu_facts and fabric_facts ran on captured hardware."""

    def facts(gpu_capture, fabric_case, address):
        root = host_tree(fabric_case)
        ip_addresses = json.loads((root / "ip_addr.json").read_text())
        fabric = copy.deepcopy(probe_fabric(ip_addresses, str(root / "sys"), str(root / "proc"), str(root / "dev")))
        fabric["cluster_address"] = address
        fabric["recommended_env"]["VLLM_HOST_IP"] = address
        gpu = probe_gpus(nvml_replay(gpu_capture))
        return {"ansible_facts": {"llmserve_gpu": gpu, "llmserve_fabric": fabric}}

    return facts


def run_action(args, hostvars, play_hosts):
    task = SimpleNamespace(args=args, async_val=0, check_mode=False, action="llmserve.cluster.cluster_preflight")
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir=None))
    action = ActionModule(task, connection, play_context=None, loader=None, templar=None)
    return action.run(task_vars={"hostvars": hostvars, "ansible_play_hosts": play_hosts})


def test_matching_nodes_pass(host_facts):
    hostvars = {
        "gpu1": host_facts("a10_1x.json", "ethernet_plain", "10.10.1.21"),
        "gpu2": host_facts("a10_1x.json", "ethernet_plain", "10.10.1.22"),
    }

    result = run_action({}, hostvars, ["gpu1", "gpu2"])

    assert result["failed"] is False
    assert result["errors"] == []
    assert result["hosts"] == ["gpu1", "gpu2"]
    assert result["msg"] == "Cluster preflight passed for 2 host(s) with 0 warning(s)."


def test_mixed_nodes_fail_when_heterogeneous_gpus_is_error(host_facts):
    hostvars = {
        "gpu1": host_facts("h100_sxm_8x.json", "ethernet_plain", "10.10.1.21"),
        "gpu2": host_facts("a10_1x.json", "ethernet_plain", "10.10.1.22"),
    }
    hostvars["gpu1"]["ansible_facts"]["llmserve_gpu"].update(
        fabric_manager_active=True, fabric_manager_version="550.54.15"
    )

    warned = run_action({}, hostvars, ["gpu1", "gpu2"])
    failed = run_action({"heterogeneous_gpus": "error"}, hostvars, ["gpu1", "gpu2"])

    assert warned["failed"] is False
    assert warned["warnings"][0].startswith("[heterogeneous_gpus]")
    assert failed["failed"] is True
    assert failed["msg"].startswith("Cluster preflight found 1 problem(s): [heterogeneous_gpus]")


def test_hosts_option_limits_the_comparison_and_missing_facts_are_named(host_facts):
    hostvars = {
        "gpu1": host_facts("a10_1x.json", "ethernet_plain", "10.10.1.21"),
        "fresh": {"ansible_facts": {}},
    }

    only_gpu1 = run_action({"hosts": ["gpu1"]}, hostvars, ["gpu1", "fresh"])
    both = run_action({}, hostvars, ["gpu1", "fresh"])

    assert only_gpu1["failed"] is False
    assert both["failed"] is True
    assert "[facts] hosts fresh: ansible_facts.llmserve_fabric is missing" in both["msg"]


def test_unknown_option_is_refused():
    with pytest.raises(AnsibleActionFail, match="Invalid options"):
        run_action({"heterogenous_gpus": "error"}, {}, [])
