# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Whether a host reboots for its new NVIDIA driver, and how the cluster drains for it.

Fed with what the facts modules really return: nvidia_driver_facts' state built from a captured HGX H100 PCI tree
and a captured /proc/driver/nvidia/version, `systemctl show` captured on sandbox hosts (through serving_unit_facts'
parser), and plans the planner makes for the sandbox and for data-parallel clusters.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from host_trees import hgx_h100_driver_state

from ansible_collections.llmserve.cluster.plugins.module_utils import _nvidia_driver as nd
from ansible_collections.llmserve.cluster.plugins.module_utils._driver_reboot import (
    drain_for_reboot,
    pending_reboot_message,
    pending_reboot_text,
    reboot_decision,
    serving_evidence,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import load_model_spec_from_dir
from ansible_collections.llmserve.cluster.plugins.module_utils._parallel_planner import plan
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import ClusterNode, PlanOptions
from ansible_collections.llmserve.cluster.plugins.module_utils._serving_unit import parse_systemctl_show, unit_facts

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
DRIVER = FIXTURES / "nvidia_driver"
CAPTURES = FIXTURES / "systemd" / "serving_unit"
# The states the drill feeds the role on the sandbox (which has no NVIDIA driver), kept equal to build_state below:
# after installing 580.142 over a loaded 570.195.03, and after the reboot that loads it.
UPGRADED_STATE = DRIVER / "state_580.142_installed_570.195.03_loaded.json"
REBOOTED_STATE = DRIVER / "state_580.142_installed_and_loaded.json"
UNITS = {
    "vllm": "vllm.service",
    "llama_server": "llama-server.service",
    "llama_rpc": "llama-rpc.service",
    "ray_worker": "ray-worker.service",
    "ray_head": "ray-head.service",
}
SANDBOX_CPU = {"gpus": 1, "gpu_memory_mib": 1024, "gpu_name": "cpu"}


def driver_state(tmp_path, installed="580.142-0ubuntu1", proc="open_570.195.03_ubuntu2204.txt", **overrides):
    """nvidia_driver_facts' state on an HGX H100 host running 570.195.03 after the 580 branch was installed."""
    arguments = dict(
        branch="580",
        loaded=nd.parse_proc_driver_version((DRIVER / "proc_version" / proc).read_text()),
        installed_package_version=installed,
    )
    arguments.update(overrides)
    return hgx_h100_driver_state(tmp_path, **arguments)


def captured_units(capture: str, names=None) -> dict:
    """serving_unit_facts' ``units`` for a captured `systemctl show` of vllm.service; the other units absent."""
    vllm = parse_systemctl_show((CAPTURES / capture).read_text(), ["vllm.service"])["vllm.service"]
    absent = parse_systemctl_show((CAPTURES / "node1-vllm-running-ray-head-absent.show").read_text(),
                                  ["vllm.service", "ray-head.service"])["ray-head.service"]  # fmt: skip
    return {
        name: unit_facts(name, vllm if name == "vllm.service" else dict(absent, Id=name), name == "vllm.service")
        for name in names or UNITS.values()
    }


def tiny_plan(hosts: int, **options) -> dict:
    spec = load_model_spec_from_dir(str(FIXTURES / "models" / "tiny-llama"))
    cluster = [ClusterNode(name=f"node{index}", **SANDBOX_CPU) for index in range(1, hosts + 1)]
    return plan(spec, cluster, PlanOptions(max_model_len=256, **options)).to_dict()


# --- The state the drill uses is the one nvidia_driver_facts builds ------------------------------


def test_the_drills_driver_state_is_what_build_state_returns_after_an_upgrade(tmp_path):
    state = driver_state(tmp_path)
    assert state["reboot_required"] and state["gpu_present"]
    assert state["installed_driver_version"] == "580.142"
    assert state["loaded_driver"] == {"version": "570.195.03", "branch": "570", "flavour": "open"}
    assert json.loads(UPGRADED_STATE.read_text()) == json.loads(json.dumps(state))


def test_the_drills_state_after_the_reboot_is_what_build_state_returns_then(tmp_path):
    state = driver_state(tmp_path, proc="open_580.142_ubuntu2404.txt")
    assert not state["reboot_required"] and not state["install_needed"]
    assert json.loads(REBOOTED_STATE.read_text()) == json.loads(json.dumps(state))


# --- What counts as serving -----------------------------------------------------------------------


def test_a_rank_that_runs_and_is_in_the_plan_serves_for_both_reasons():
    evidence = serving_evidence(
        "node2", captured_units("node1-vllm-running.show"), tiny_plan(2, tensor_parallel_size=2)
    )
    assert evidence == ["vllm.service is active", "the plan in effect has it as node rank 1"]


def test_a_rank_systemd_is_restarting_still_serves():
    # ActiveState=activating, SubState=auto-restart: the unit is on its way back into its group.
    assert serving_evidence("node2", captured_units("node2-vllm-auto-restart.show"), None) == [
        "vllm.service is activating"
    ]


def test_a_stopped_rank_of_the_plan_in_effect_still_serves():
    # Stopped by hand (fault drill 2): the plan still places rank 1 there, and deploy would start it again.
    evidence = serving_evidence(
        "node2", captured_units("node2-vllm-stopped.show"), tiny_plan(2, tensor_parallel_size=2)
    )
    assert evidence == ["the plan in effect has it as node rank 1"]


def test_a_bare_host_before_the_first_deploy_serves_nothing():
    shown = parse_systemctl_show(
        (CAPTURES / "node2-before-deploy-vllm-ray-worker.show").read_text(), ["vllm.service", "ray-worker.service"]
    )
    units = {name: unit_facts(name, properties, False) for name, properties in shown.items()}
    assert serving_evidence("node2", units, None) == []


def test_a_spare_node_outside_the_plan_with_no_unit_serves_nothing():
    shown = parse_systemctl_show(
        (CAPTURES / "node2-before-deploy-vllm-ray-worker.show").read_text(), ["vllm.service", "ray-worker.service"]
    )
    units = {name: unit_facts(name, properties, False) for name, properties in shown.items()}
    assert serving_evidence("node3", units, tiny_plan(2, tensor_parallel_size=2)) == []


# --- The decision ---------------------------------------------------------------------------------


@pytest.fixture
def upgraded(tmp_path):
    return driver_state(tmp_path)


def test_a_serving_host_without_consent_does_not_reboot_and_says_how_to_consent(upgraded):
    decision = reboot_decision(
        upgraded, "node1", captured_units("node1-vllm-running.show"), tiny_plan(2, tensor_parallel_size=2), True, False
    )
    assert decision["action"] == "pending"
    assert decision["installed_driver_version"] == "580.142"
    assert decision["loaded_driver_version"] == "570.195.03"
    assert decision["serving"] == ["vllm.service is active", "the plan in effect has it as node rank 0"]
    assert "llmserve_allow_reboot=true" in decision["reason"]
    assert pending_reboot_text(decision) == "reboot pending: driver 580.142 installed, 570.195.03 loaded"
    assert pending_reboot_message(decision).startswith(
        "node1: reboot pending: driver 580.142 installed, 570.195.03 loaded. It does not reboot on this run: it serves"
    )


def test_a_serving_host_with_consent_is_left_to_the_drain(upgraded):
    decision = reboot_decision(
        upgraded, "node1", captured_units("node1-vllm-running.show"), tiny_plan(2, tensor_parallel_size=2), True, True
    )
    assert (decision["action"], decision["consent"]) == ("drain", True)


def test_a_host_that_serves_nothing_reboots_as_nvidia_driver_reboot_says(upgraded, tmp_path):
    bare = captured_units("node2-vllm-stopped.show", names=("ray-head.service",))
    assert reboot_decision(upgraded, "node3", bare, None, True, False)["action"] == "reboot"
    assert reboot_decision(upgraded, "node3", bare, None, False, False)["action"] == "pending"
    assert "nvidia_driver_reboot is false" in reboot_decision(upgraded, "node3", bare, None, False, True)["reason"]


def test_consent_does_not_override_nvidia_driver_reboot_false(upgraded):
    decision = reboot_decision(upgraded, "node1", captured_units("node1-vllm-running.show"), None, False, True)
    assert decision["action"] == "pending"


def test_the_control_node_never_reboots_even_with_consent(tmp_path):
    state = driver_state(tmp_path, control_node=(True, "ansible_connection is local"))
    for consent in (False, True):
        decision = reboot_decision(state, "localhost", {}, None, True, consent)
        assert decision["action"] == "pending" and "control node" in decision["reason"]


def test_nothing_to_decide_when_the_installed_driver_is_loaded(tmp_path):
    state = driver_state(tmp_path, installed="580.142-0ubuntu1", proc="open_580.142_ubuntu2404.txt")
    assert not state["reboot_required"]
    decision = reboot_decision(state, "node1", captured_units("node1-vllm-running.show"), None, True, True)
    assert decision["action"] == "none" and decision["serving"] == []


def test_a_fresh_host_without_any_driver_installed_needs_no_reboot_yet(tmp_path):
    state = driver_state(tmp_path, installed=None, loaded=None)
    assert reboot_decision(state, "node1", {}, None, True, False)["action"] == "none"


def test_a_host_where_no_driver_is_loaded_yet_names_that(tmp_path):
    state = driver_state(tmp_path, loaded=None)
    decision = reboot_decision(state, "node1", captured_units("node1-vllm-running.show"), None, True, False)
    assert pending_reboot_text(decision) == "reboot pending: driver 580.142 installed, no driver loaded"


# --- The drain ------------------------------------------------------------------------------------


def node(record=None, units=None, node_plan=None):
    return {"record": record, "units": units, "plan": node_plan}


def pending_record(upgraded, host, node_plan, consent):
    return reboot_decision(upgraded, host, captured_units("node1-vllm-running.show"), node_plan, True, consent)


def test_a_tp2_native_group_drains_whole_and_only_the_pending_host_reboots(upgraded):
    tp2 = tiny_plan(2, tensor_parallel_size=2)
    units = captured_units("node1-vllm-running.show")
    nodes = {
        "node1": node(None, units, tp2),
        "node2": node(pending_record(upgraded, "node2", tp2, True), units, tp2),
    }
    drain = drain_for_reboot(nodes, True, "native", UNITS)
    assert drain["reboot"] == ["node2"]
    # Every rank of the group stops: a rank restarted alone cannot rejoin the others.
    assert drain["draining"] == ["node1", "node2"]
    assert drain["stop"] == {"node1": [["vllm.service"], [], []], "node2": [["vllm.service"], [], []]}
    assert drain["pending"] == []


def test_other_data_parallel_groups_keep_serving(upgraded):
    dp3 = tiny_plan(3, data_parallel_size=3)
    assert [group["nodes"] for group in dp3["serving_groups"]] == [["node1"], ["node2"], ["node3"]]
    units = captured_units("node1-vllm-running.show")
    nodes = {name: node(None, units, dp3) for name in ("node1", "node2", "node3")}
    nodes["node2"] = node(pending_record(upgraded, "node2", dp3, True), units, dp3)
    drain = drain_for_reboot(nodes, True, "native", UNITS)
    assert (drain["reboot"], drain["draining"]) == (["node2"], ["node2"])
    assert drain["stop"]["node1"] == [[], [], []] and drain["stop"]["node3"] == [[], [], []]


def test_without_consent_on_this_run_nothing_stops_and_the_record_is_reported(upgraded):
    tp2 = tiny_plan(2, tensor_parallel_size=2)
    units = captured_units("node1-vllm-running.show")
    # A record an earlier run with consent left (it failed before the drain), and this run has none.
    nodes = {"node1": node(None, units, tp2), "node2": node(pending_record(upgraded, "node2", tp2, True), units, tp2)}
    drain = drain_for_reboot(nodes, False, "native", UNITS)
    assert (drain["reboot"], drain["draining"]) == ([], [])
    assert all(stages == [[], [], []] for stages in drain["stop"].values())
    assert drain["pending"] == ["node2"]
    assert drain["messages"]["node2"].startswith("node2: reboot pending: driver 580.142 installed, 570.195.03 loaded.")


def test_a_pending_record_does_not_drain_even_when_this_run_consents(upgraded):
    # nvidia_driver_reboot false (or the control node) recorded pending, not drain: consent cannot move it.
    tp2 = tiny_plan(2, tensor_parallel_size=2)
    units = captured_units("node1-vllm-running.show")
    record = reboot_decision(upgraded, "node2", units, tp2, False, True)
    drain = drain_for_reboot(
        {"node1": node(None, units, tp2), "node2": node(record, units, tp2)}, True, "native", UNITS
    )
    assert (drain["reboot"], drain["pending"]) == ([], ["node2"])


def test_ray_stops_vllm_then_the_workers_then_the_head_on_every_host(upgraded):
    ray_head = {"vllm.service", "ray-head.service"}
    ray_worker = {"ray-worker.service"}

    def units_of(loaded):
        return {name: {"loaded": name in loaded, "active_state": "active"} for name in UNITS.values()}

    record = pending_record(upgraded, "node3", None, True)
    nodes = {
        "node1": node(None, units_of(ray_head)),
        "node2": node(None, units_of(ray_worker)),
        "node3": node(record, units_of(ray_worker)),
    }
    drain = drain_for_reboot(nodes, True, "ray", UNITS)
    assert drain["reboot"] == ["node3"] and drain["draining"] == ["node1", "node2", "node3"]
    assert drain["stop"] == {
        "node1": [["vllm.service"], [], ["ray-head.service"]],
        "node2": [[], ["ray-worker.service"], []],
        "node3": [[], ["ray-worker.service"], []],
    }


def test_llama_cpp_stops_llama_server_before_the_rpc_workers(upgraded):
    def units_of(loaded):
        return {name: {"loaded": name in loaded, "active_state": "active"} for name in UNITS.values()}

    nodes = {
        "node1": node(None, units_of({"llama-server.service"})),
        "node2": node(pending_record(upgraded, "node2", None, True), units_of({"llama-rpc.service"})),
    }
    drain = drain_for_reboot(nodes, True, "llama_cpp", UNITS)
    assert drain["stop"] == {"node1": [["llama-server.service"], [], []], "node2": [[], ["llama-rpc.service"], []]}
