# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What serving_unit_facts makes of a node, and the serving roles' decisions, on captured `systemctl show` output.

The captures under fixtures/systemd/serving_unit are `systemctl show --property=<SHOW_PROPERTIES> -- UNITS` run
on sandbox hosts (systemd 252, Debian 12) at the moments the roles decide: before the first deploy, with the
group serving, with a rank stopped, and right after a rank's main process was killed (systemd restarting it).
"""

from __future__ import annotations

import json
import pwd
from pathlib import Path

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._serving_groups import node_role
from ansible_collections.llmserve.cluster.plugins.module_utils._serving_unit import (
    SHOW_PROPERTIES,
    account_facts,
    directory_facts,
    group_restart,
    parse_systemctl_show,
    plan_needs_recording,
    recorded_plan,
    runs_vllm_unit,
    show_command,
    unit_facts,
    unit_state_word,
)

CAPTURES = Path(__file__).resolve().parents[2] / "fixtures" / "systemd" / "serving_unit"
# node2 before the first deploy: neither vllm.service nor ray-worker.service exists.
BEFORE_DEPLOY = "node2-before-deploy-vllm-ray-worker.show"


def captured_units(capture: str, units: list[str], files_present: bool = True) -> dict:
    shown = parse_systemctl_show((CAPTURES / capture).read_text(), units)
    return {name: unit_facts(name, properties, files_present) for name, properties in shown.items()}


def test_the_command_asks_every_property_of_every_unit_in_one_call():
    assert show_command("/usr/bin/systemctl", ["vllm.service", "ray-head.service"]) == [
        "/usr/bin/systemctl",
        "show",
        "--property=Id,LoadState,ActiveState,SubState,UnitFileState,ActiveEnterTimestamp,NRestarts",
        "--",
        "vllm.service",
        "ray-head.service",
    ]


def test_units_that_do_not_exist_yet_read_as_absent():
    # systemd prints the properties in its own order (NRestarts first), not the order asked.
    units = captured_units(BEFORE_DEPLOY, ["vllm.service", "ray-worker.service"], False)
    for name in ("vllm.service", "ray-worker.service"):
        unit = units[name]
        assert unit["load_state"] == "not-found"
        assert (unit["loaded"], unit["running"], unit["enabled"], unit["file_present"]) == (False, False, False, False)
        assert unit["active_enter_timestamp"] == ""
        assert unit_state_word(unit) == "absent"


def test_a_serving_rank_reads_as_running_and_enabled():
    unit = captured_units("node1-vllm-running.show", ["vllm.service"])["vllm.service"]
    assert (unit["load_state"], unit["active_state"], unit["sub_state"]) == ("loaded", "active", "running")
    assert unit["enabled"] and unit["running"] and unit["loaded"]
    assert unit["active_enter_timestamp"].endswith(" UTC")
    assert unit["restarts"] == 0
    assert unit_state_word(unit) == "running"


def test_a_stopped_rank_reads_as_dead_but_still_enabled():
    unit = captured_units("node2-vllm-stopped.show", ["vllm.service"])["vllm.service"]
    assert (unit["active_state"], unit["sub_state"], unit["unit_file_state"]) == ("inactive", "dead", "enabled")
    assert unit["active_enter_timestamp"] == "Thu 2026-12-03 15:25:38 UTC"
    assert not unit["running"]
    assert unit_state_word(unit) == "dead"


def test_a_killed_rank_reads_as_not_running_while_systemd_stops_and_restarts_it():
    # `systemctl kill --signal=SIGKILL --kill-whom=main`: KillMode=mixed first kills the rest of the unit,
    # then Restart=always waits RestartSec before starting it again.
    stopping = captured_units("node2-vllm-killed-stopping.show", ["vllm.service"])["vllm.service"]
    assert (stopping["active_state"], stopping["sub_state"]) == ("deactivating", "stop-sigkill")
    waiting = captured_units("node2-vllm-auto-restart.show", ["vllm.service"])["vllm.service"]
    assert (waiting["active_state"], waiting["sub_state"]) == ("activating", "auto-restart")
    for unit in (stopping, waiting):
        assert unit["loaded"] and unit["enabled"] and not unit["running"]
    assert unit_state_word(waiting) == "auto-restart"


def test_a_rank_restarted_once_then_stopped_counts_its_restart():
    unit = captured_units("node2-vllm-stopped.show", ["vllm.service"])["vllm.service"]
    assert unit["restarts"] == 1


def test_two_units_in_one_call_are_told_apart_by_their_order():
    units = captured_units("node1-vllm-running-ray-head-absent.show", ["vllm.service", "ray-head.service"])
    assert units["vllm.service"]["running"] and units["vllm.service"]["load_state"] == "loaded"
    assert units["ray-head.service"]["load_state"] == "not-found" and not units["ray-head.service"]["running"]


def test_blocks_that_do_not_match_the_units_asked_are_refused():
    text = (CAPTURES / "node1-vllm-running.show").read_text()
    with pytest.raises(ValueError, match="1 blocks for 2 units"):
        parse_systemctl_show(text, ["vllm.service", "ray-head.service"])


def test_every_captured_block_has_every_property_asked():
    for capture in CAPTURES.glob("*.show"):
        for block in (chunk for chunk in capture.read_text().split("\n\n") if chunk.strip()):
            keys = {line.partition("=")[0] for line in block.splitlines()}
            assert keys == set(SHOW_PROPERTIES), capture.name


def test_the_service_account_is_ready_only_with_its_home_and_nologin():
    entry = ("llmserve", "x", 999, 997, "", "/var/lib/llmserve", "/usr/sbin/nologin")
    ready = account_facts("llmserve", entry, True, "/var/lib/llmserve")
    assert ready["ready"] and ready["uid"] == 999
    assert not account_facts("llmserve", entry, False, "/var/lib/llmserve")["ready"]
    login = (*entry[:6], "/bin/bash")
    assert not account_facts("llmserve", login, True, "/var/lib/llmserve")["ready"]
    missing = account_facts("llmserve", None, False, "/var/lib/llmserve")
    assert (missing["exists"], missing["home"], missing["ready"]) == (False, None, False)


def test_the_account_reads_from_a_real_passwd_entry():
    root = pwd.getpwnam("root")
    facts = account_facts("root", tuple(root), True, "/root", expected_shell=root.pw_shell)
    assert facts["ready"] and facts["home"] == "/root"


def test_the_configuration_directory_is_ready_only_with_its_owner_and_mode():
    assert directory_facts("/etc/llmserve", "root", "root", 0o40755, "root", "root", "0755")["ready"]
    assert directory_facts("/etc/llmserve", "root", "root", 0o40755, "root", "root", "0755")["mode"] == "0755"
    assert not directory_facts("/etc/llmserve", "root", "root", 0o40775, "root", "root", "0755")["ready"]
    assert not directory_facts("/etc/llmserve/ray", "root", "root", 0o40750, "root", "llmserve", "0750")["ready"]
    missing = directory_facts("/etc/llmserve", None, None, None, "root", "root", "0755")
    assert (missing["exists"], missing["mode"], missing["ready"]) == (False, None, False)


def test_the_recorded_plan_is_parsed_and_compared_as_json():
    plan = {"nodes": [{"name": "node1"}, {"name": "node2"}], "vllm_args": ["--tensor-parallel-size", "2"], "kv": 0.9}
    text = json.dumps(plan, indent=4, sort_keys=True) + "\n"
    recorded = recorded_plan(text)
    assert recorded == {"plan": plan, "error": None}
    assert not plan_needs_recording(recorded["plan"], dict(reversed(list(plan.items()))))
    assert plan_needs_recording(recorded["plan"], dict(plan, vllm_args=["--tensor-parallel-size", "1"]))
    assert plan_needs_recording(None, plan)


def test_a_missing_or_broken_plan_file_gives_no_plan_and_says_why():
    assert recorded_plan(None) == {"plan": None, "error": None}
    broken = recorded_plan('{"nodes": [')
    assert broken["plan"] is None and broken["error"].startswith("not JSON")
    assert recorded_plan("[1, 2]")["error"] == "not a JSON object but list"


TWO_NODE_TP = {"nodes": [{"name": "node1"}, {"name": "node2"}]}
DP_TWO_GROUPS = {
    "nodes": [{"name": "node1"}, {"name": "node2"}],
    "data_parallel_size": 2,
    "serving_groups": [
        {"nodes": ["node1"], "replicas": [0], "data_parallel_size": 1, "endpoint_node": "node1", "vllm_args": []},
        {"nodes": ["node2"], "replicas": [1], "data_parallel_size": 1, "endpoint_node": "node2", "vllm_args": []},
    ],
}


@pytest.mark.parametrize(
    ("plan", "host", "backend", "runs"),
    [
        (TWO_NODE_TP, "node1", "native", True),
        (TWO_NODE_TP, "node2", "native", True),
        (TWO_NODE_TP, "node1", "ray", True),
        (TWO_NODE_TP, "node2", "ray", False),
        (TWO_NODE_TP, "node3", "native", False),
        (TWO_NODE_TP, "node3", "ray", False),
        (DP_TWO_GROUPS, "node2", "native", True),
    ],
)
def test_which_nodes_run_a_vllm_unit(plan, host, backend, runs):
    assert runs_vllm_unit(node_role(plan, host), backend) is runs


def status(host: str, capture: str, runs_unit: bool = True, config_changed: bool = False) -> dict:
    units = ["vllm.service", "ray-worker.service"] if capture == BEFORE_DEPLOY else ["vllm.service"]
    unit = captured_units(capture, units)["vllm.service"]
    return {"host": host, "runs_unit": runs_unit, "config_changed": config_changed, "unit": unit}


def test_a_serving_group_with_nothing_changed_and_an_answer_stays():
    nodes = [status("node1", "node1-vllm-running.show"), status("node2", "node1-vllm-running.show")]
    assert group_restart(nodes, True) == {"restart": False, "reasons": []}


def test_a_group_restarts_whole_when_one_node_changed():
    nodes = [
        status("node1", "node1-vllm-running.show"),
        status("node2", "node1-vllm-running.show", config_changed=True),
    ]
    decision = group_restart(nodes, None)
    assert decision["restart"]
    assert decision["reasons"] == ["node2: its vLLM unit or environment changed"]


@pytest.mark.parametrize(
    ("capture", "state"),
    [
        ("node2-vllm-stopped.show", "dead"),
        ("node2-vllm-killed-stopping.show", "stop-sigkill"),
        ("node2-vllm-auto-restart.show", "auto-restart"),
    ],
)
def test_a_group_restarts_whole_when_a_rank_is_down(capture, state):
    nodes = [status("node1", "node1-vllm-running.show"), status("node2", capture)]
    decision = group_restart(nodes, True)
    assert decision == {"restart": True, "reasons": [f"node2: vllm.service is {state}"]}


def test_a_group_restarts_when_rank_0_answers_no_completion():
    nodes = [status("node1", "node1-vllm-running.show"), status("node2", "node1-vllm-running.show")]
    assert group_restart(nodes, False) == {"restart": True, "reasons": ["rank 0 answered no completion"]}


def test_a_node_that_runs_no_unit_does_not_restart_its_group():
    # Ray backend: rank 1 has no vllm.service; a first deploy finds it absent there, which is as planned.
    nodes = [
        status("node1", "node1-vllm-running.show"),
        status("node2", BEFORE_DEPLOY, runs_unit=False),
    ]
    assert group_restart(nodes, True)["restart"] is False


def test_a_first_deploy_starts_the_group():
    nodes = [
        status("node1", BEFORE_DEPLOY, config_changed=True),
        status("node2", BEFORE_DEPLOY, config_changed=True),
    ]
    decision = group_restart(nodes, None)
    assert decision["restart"]
    assert "node1: vllm.service is absent" in decision["reasons"]


def test_an_empty_group_restarts_nothing():
    # A node the plan does not use sees no group of its own.
    assert group_restart([], None) == {"restart": False, "reasons": []}
