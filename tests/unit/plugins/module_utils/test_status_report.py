# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The status report from what nodes really answer: `systemctl show` captured on the sandbox (parsed as
ansible.builtin.systemd_service parses it), NVML sessions, real plans and completion answers."""

from __future__ import annotations

import copy
import json
import re

import pytest
from status_shapes import FIXTURES, answered_endpoint, sandbox_node, sandbox_plan, systemd_result

from ansible_collections.llmserve.cluster.plugins.module_utils._driver_reboot import reboot_decision
from ansible_collections.llmserve.cluster.plugins.module_utils._endpoint_probe import read_completion
from ansible_collections.llmserve.cluster.plugins.module_utils._gpu_probe import probe_gpus
from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import load_model_spec_from_dir
from ansible_collections.llmserve.cluster.plugins.module_utils._parallel_planner import plan
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import ClusterNode, PlanOptions
from ansible_collections.llmserve.cluster.plugins.module_utils._ray_cluster import readiness_message, summarize_nodes
from ansible_collections.llmserve.cluster.plugins.module_utils._status_report import (
    cluster_status,
    expected_units,
    plan_in_effect,
    render_status,
    unit_state,
)

# What rank 0 answered on the sandbox once rank 1's unit was stopped (its /health still said 200).
ENGINE_DEAD = (
    b'{"error":{"message":"EngineCore encountered an issue. See stack trace (above) for the root cause.",'
    b'"type":"InternalServerError","param":null,"code":500}}'
)


@pytest.fixture
def sandbox(nvml_replay):
    nodes = {
        "node1": sandbox_node("10.77.6.11", nvml_replay),
        "node2": sandbox_node("10.77.6.12", nvml_replay),
    }
    return nodes


def test_a_serving_sandbox_is_healthy_and_every_row_says_so(sandbox):
    status = cluster_status("native", "node1", sandbox, answered_endpoint(), served_model="tiny-llama")
    assert status["problems"] == []
    assert status["healthy"]
    assert [row["node_rank"] for row in status["nodes"]] == [0, 1]
    report = render_status(status)
    assert "CLUSTER  backend native, 2 x 1 x 1 (TP x PP x DP), tensor_parallel" in report
    assert report.count("vllm active (running)") == 2
    assert report.count("cpu (described)") == 2 and report.count("no NVML") == 2
    assert "PP 0 · TP 1 · layers 0-3" in report
    assert "ok: ' cluster'" in report and "0.082" in report
    assert "| tensor_parallel |" in report  # the plan in effect, as the planner drew it
    assert report.rstrip().endswith("HEALTHY: every unit is active and the endpoint answered a completion.")


def test_a_pending_driver_reboot_is_a_note_per_node_not_a_problem(sandbox):
    # The record nvidia_driver keeps on a serving host after installing 580.142 over a loaded 570.195.03 without
    # consent (the state is the one test_driver_reboot.py builds from captured driver shapes).
    state = json.loads((FIXTURES / "nvidia_driver" / "state_580.142_installed_570.195.03_loaded.json").read_text())
    units = {"vllm.service": {"loaded": True, "active_state": "active"}}
    sandbox["node2"]["reboot_pending"] = reboot_decision(state, "node2", units, sandbox["node2"]["plan"], True, False)
    status = cluster_status("native", "node1", sandbox, answered_endpoint(), served_model="tiny-llama")
    assert status["healthy"] and status["problems"] == []
    assert [row["reboot_pending"] for row in status["nodes"]] == [
        None,
        "reboot pending: driver 580.142 installed, 570.195.03 loaded",
    ]
    assert len(status["warnings"]) == 1
    note = status["warnings"][0]
    assert note.startswith("node2: reboot pending: driver 580.142 installed, 570.195.03 loaded; it serves (")
    assert "llmserve_allow_reboot=true" in note
    assert "NOTE: " + note in render_status(status)


def test_an_absent_unit_is_absent_and_a_captured_active_one_is_running():
    absent = unit_state(systemd_result("ray-head.service", "ray-head-not-found.show"))
    assert absent == {"unit": "ray-head.service", "present": False, "state": "absent", "since": None, "restarts": 0}
    active = unit_state(systemd_result("vllm.service", "vllm-active-rank1.show"))
    assert (active["state"], active["sub_state"], active["since"]) == (
        "active",
        "running",
        "Sat 2026-11-21 15:21:21 UTC",
    )


def test_a_stopped_worker_rank_is_a_problem_that_names_the_node(sandbox, nvml_replay):
    sandbox["node2"] = sandbox_node("10.77.6.12", nvml_replay, vllm_capture="vllm-inactive-rank1.show")
    # With its peer gone, rank 0 can still answer /health, but not a completion.
    endpoint = answered_endpoint()
    endpoint["completion"] = dict(read_completion(500, ENGINE_DEAD), seconds=0.154, unit_state="active")
    status = cluster_status("native", "node1", sandbox, endpoint, served_model="tiny-llama")
    assert not status["healthy"]
    assert status["problems"][0].startswith("vllm.service on node2 is inactive (dead) since ")
    assert any(
        problem.startswith("No one-token completion from http://10.77.6.11:8000") for problem in status["problems"]
    )
    report = render_status(status)
    assert "vllm inactive (dead)" in report
    assert "PROBLEMS (2):" in report
    # The table keeps its width; the problem list has the whole answer.
    assert (
        'FAILED: HTTP 500: {"error":{"message":"EngineCore encountered an issue. See stack trace (above) f...' in report
    )
    assert max(len(line) for line in report.splitlines() if line.startswith("|")) < 200


def test_an_unreachable_node_is_reported_not_fatal(sandbox):
    sandbox["node2"] = {"reachable": False, "error": "Failed to connect to the host via ssh: No route to host"}
    status = cluster_status("native", "node1", sandbox, answered_endpoint(), served_model="tiny-llama")
    assert status["problems"] == ["node2 is unreachable: Failed to connect to the host via ssh: No route to host"]
    assert re.search(r"^\|\s*node2\s*\|\s*\?\s*\|\s*1\s*\|\s*NO\s*\|\s*unknown\s*\|", render_status(status), re.M)


def test_nodes_configured_by_different_runs_disagree(sandbox):
    other = sandbox_plan()
    other["vllm_args"] = [*other["vllm_args"], "--max-num-seqs", "8"]
    sandbox["node2"]["plan"] = other
    status = cluster_status("native", "node1", sandbox, answered_endpoint(), served_model="tiny-llama")
    assert status["problems"] == [
        "/etc/llmserve/plan.json on node2 differs from the one on node1: the nodes were configured by different runs; "
        "re-run deploy.yml."
    ]
    assert [row["plan_state"] for row in status["nodes"]] == ["in effect", "differs"]


def test_without_plan_files_the_plan_is_unknown_and_only_the_head_must_serve(sandbox, nvml_replay):
    sandbox["node1"]["plan"] = None
    sandbox["node2"] = sandbox_node("10.77.6.12", nvml_replay, node_plan=None)
    status = cluster_status("native", "node1", sandbox, answered_endpoint(), served_model="tiny-llama")
    assert status["healthy"] and status["plan"] is None
    assert status["warnings"] == ["No node has /etc/llmserve/plan.json: the plan in effect is unknown."]
    assert "CLUSTER  backend native, plan in effect unknown" in render_status(status)
    assert plan_in_effect({"node1": None, "node2": None}) == (None, [])


def test_expected_units_follow_the_backend():
    h100_plan = {"nodes": [{"name": "gpu-a"}, {"name": "gpu-b"}]}
    names = ["gpu-a", "gpu-b", "gpu-c"]
    assert expected_units("native", h100_plan, "gpu-a", names) == {
        "gpu-a": ["vllm.service"],
        "gpu-b": ["vllm.service"],
        "gpu-c": [],
    }
    assert expected_units("ray", h100_plan, "gpu-a", names) == {
        "gpu-a": ["ray-head.service", "vllm.service"],
        "gpu-b": ["ray-worker.service"],
        "gpu-c": ["ray-worker.service"],
    }
    assert expected_units("llama_cpp", None, "gpu-a", names)["gpu-a"] == ["llama-server.service"]


def test_ray_backend_reports_the_node_the_gcs_does_not_list(nvml_replay):
    h100 = probe_gpus(nvml_replay("h100_sxm_8x.json"))
    cluster = [
        ClusterNode(name=name, gpus=8, gpu_memory_mib=81559, gpu_name="NVIDIA H100 80GB HBM3") for name in ("a", "b")
    ]
    spec = load_model_spec_from_dir(str(FIXTURES / "models" / "Llama-3.1-70B-Instruct"))
    tp8_pp2 = plan(spec, cluster, PlanOptions(tensor_parallel_size=8, pipeline_parallel_size=2)).to_dict()
    ray_units = {
        "a": [systemd_result("vllm.service", "vllm-active-rank1.show")],
        "b": [systemd_result("ray-head.service", "ray-head-not-found.show")],
    }
    nodes = {
        name: {
            "reachable": True,
            "address": address,
            "gpu": h100,
            "devices": {},
            "units": ray_units[name],
            "plan": tp8_pp2,
        }
        for name, address in (("a", "10.0.0.11"), ("b", "10.0.0.12"))
    }
    # ray.nodes() as Ray 2.x returns it: only the head is alive.
    summary = summarize_nodes(
        [{"NodeManagerAddress": "10.0.0.11", "Alive": True, "Resources": {"CPU": 208.0, "GPU": 8.0}}]
    )
    expected = {"a": "10.0.0.11", "b": "10.0.0.12"}
    ray = {"ray_cluster": summary, "missing": ["b"], "message": readiness_message(summary, expected, 16)}
    status = cluster_status("ray", "a", nodes, answered_endpoint(), ray, served_model="tiny-llama")
    problems = status["problems"]
    assert "ray-head.service is not installed on a, which the plan needs; re-run deploy.yml." in problems
    assert "ray-worker.service is not installed on b, which the plan needs; re-run deploy.yml." in problems
    assert any(problem.startswith("Ray does not list b as alive") for problem in problems)
    report = render_status(status)
    assert "RAY  nodes the GCS lists" in report
    # Real NVML shapes: every H100 with its memory, and its place in the TP 8 x PP 2 plan.
    assert report.count("NVIDIA H100 80GB HBM3") >= 16
    assert "PP 1 · TP 7 · layers 40-79" in report
    assert "8 x NVIDIA H100 80GB HBM3 (NVML, driver" not in report  # the summary is for nodes without devices only


def test_an_endpoint_without_the_model_or_the_key_is_a_problem(sandbox):
    endpoint = copy.deepcopy(answered_endpoint())
    endpoint.update(models_status=401, models=[])
    endpoint["completion"] = dict(read_completion(401, b'{"error":"Unauthorized"}'), seconds=0.004)
    status = cluster_status("native", "node1", sandbox, endpoint, served_model="tiny-llama")
    assert status["problems"] == [
        "http://10.77.6.11:8000/v1/models answered 401.",
        'No one-token completion from http://10.77.6.11:8000: HTTP 401: {"error":"Unauthorized"}.',
    ]


def test_an_endpoint_that_was_never_probed_is_a_problem(sandbox):
    status = cluster_status("native", "node1", sandbox, {"node": "node1"}, served_model="tiny-llama")
    assert status["problems"] == ["The endpoint was not probed: the node serving the API (node1) did not answer."]
    assert "ENDPOINT  not probed" in render_status(status)


def test_a_node_without_nvml_or_described_devices_is_a_problem(sandbox, nvml_replay):
    sandbox["node2"]["devices"] = {}
    status = cluster_status("native", "node1", sandbox, answered_endpoint(), served_model="tiny-llama")
    assert len(status["problems"]) == 1
    assert status["problems"][0].startswith("node2 shows no GPU (none: ")


def second_group_endpoint(status_code=200, body=None):
    endpoint = copy.deepcopy(answered_endpoint(seconds=0.091))
    endpoint.update(node="node2", url="http://10.77.6.12:8000")
    if body is not None:
        endpoint["completion"] = dict(read_completion(status_code, body), seconds=0.012)
    return endpoint


def test_every_serving_groups_endpoint_is_listed_and_judged(sandbox):
    """Two data-parallel groups (one per node): both answered, so the report lists both and is healthy."""
    groups = {"node1": answered_endpoint(), "node2": second_group_endpoint()}
    status = cluster_status(
        "native", "node1", sandbox, answered_endpoint(), served_model="tiny-llama", group_endpoints=groups
    )
    assert status["healthy"], status["problems"]
    assert [(group["index"], group["node"], group["ok"]) for group in status["groups"]] == [
        (0, "node1", True),
        (1, "node2", True),
    ]
    report = render_status(status)
    assert "Serving group 0 on node1: http://10.77.6.11:8000 /health 200, one-token completion ok in 0.082 s" in report
    assert "Serving group 1 on node2: http://10.77.6.12:8000 /health 200, one-token completion ok in 0.091 s" in report


def test_a_second_group_that_does_not_answer_is_a_problem_the_first_group_does_not_hide(sandbox):
    groups = {"node1": answered_endpoint(), "node2": second_group_endpoint(500, ENGINE_DEAD)}
    status = cluster_status(
        "native", "node1", sandbox, answered_endpoint(), served_model="tiny-llama", group_endpoints=groups
    )
    assert not status["healthy"]
    assert len(status["problems"]) == 1
    assert status["problems"][0].startswith("No one-token completion from http://10.77.6.12:8000: HTTP 500")
    assert "Serving group 1 on node2: http://10.77.6.12:8000 /health 200, one-token completion FAILED: HTTP 500" in (
        render_status(status)
    )
    unprobed = cluster_status(
        "native",
        "node1",
        sandbox,
        answered_endpoint(),
        served_model="tiny-llama",
        group_endpoints={"node1": answered_endpoint(), "node2": {}},
    )
    assert unprobed["problems"] == ["The endpoint was not probed: the node serving the API (node2) did not answer."]


def test_one_serving_group_adds_no_group_lines(sandbox):
    status = cluster_status("native", "node1", sandbox, answered_endpoint(), served_model="tiny-llama")
    assert status["groups"] == []
    assert "Serving group" not in render_status(status)
