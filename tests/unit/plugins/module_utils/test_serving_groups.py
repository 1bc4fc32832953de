# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Data-parallel replicas as serving groups: how the planner groups them, and each node's role in a group.

Plans come from the planner on real model configs (tests/unit/fixtures/models) and go through JSON, as
vllm_serve stores them in /etc/llmserve/plan.json and restart.yml reads them back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.llmserve.cluster.plugins.filter.node_role import FilterModule
from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import load_model_spec_from_dir
from ansible_collections.llmserve.cluster.plugins.module_utils._parallel_planner import plan
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_diff import compare_plans
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import ClusterNode, PlanError, PlanOptions
from ansible_collections.llmserve.cluster.plugins.module_utils._serving_groups import node_role, plan_serving_groups

MODELS = Path(__file__).resolve().parents[2] / "fixtures" / "models"
H100 = dict(gpu_memory_mib=81559, gpu_name="NVIDIA H100 80GB HBM3")
# What each sandbox host describes in llmserve_node_devices (inventories/sandbox/group_vars).
SANDBOX_CPU = dict(gpus=1, gpu_memory_mib=1024, gpu_name="cpu")


def model(name):
    return load_model_spec_from_dir(str(MODELS / name))


def nodes(count, gpus, kind):
    return [ClusterNode(name=f"node{index + 1}", gpus=gpus, **kind) for index in range(count)]


def stored(result) -> dict:
    """The plan as vllm_serve writes it to plan.json and restart.yml reads it back."""
    return json.loads(json.dumps(result.to_dict()))


def shape(groups):
    return [(group["nodes"], group["replicas"], group["data_parallel_size"], group["vllm_args"]) for group in groups]


# --- how the planner groups replicas -----------------------------------------------------------------------


def test_one_node_with_several_replicas_is_one_vllm_data_parallel_server():
    result = plan(model("Qwen3-8B"), nodes(1, 4, H100), PlanOptions(data_parallel_size=4))
    assert result.data_parallel_size == 4
    assert shape(result.serving_groups) == [(["node1"], [0, 1, 2, 3], 4, ["--data-parallel-size", "4"])]
    assert result.serving_groups[0]["endpoint_node"] == "node1"
    # The group carries the flag; the plan's own arguments never do (they are shared by every group).
    assert "--data-parallel-size" not in result.vllm_args


def test_two_nodes_with_one_replica_each_are_two_servers_without_a_data_parallel_flag():
    result = plan(model("Qwen3-8B"), nodes(2, 1, H100), PlanOptions(tensor_parallel_size=1, data_parallel_size=2))
    assert (result.tensor_parallel_size, result.pipeline_parallel_size) == (1, 1)
    assert shape(result.serving_groups) == [(["node1"], [0], 1, []), (["node2"], [1], 1, [])]
    assert [group["endpoint_node"] for group in result.serving_groups] == ["node1", "node2"]
    assert "--data-parallel-size" not in result.vllm_args


def test_the_sandbox_shape_two_cpu_hosts_with_data_parallel_2():
    cluster = [ClusterNode(name, **SANDBOX_CPU) for name in ("node1", "node2")]
    result = plan(model("tiny-llama"), cluster, PlanOptions(max_model_len=256, data_parallel_size=2))
    assert (result.tensor_parallel_size, result.pipeline_parallel_size, result.data_parallel_size) == (1, 1, 2)
    assert shape(result.serving_groups) == [(["node1"], [0], 1, []), (["node2"], [1], 1, [])]


def test_replicas_that_span_nodes_are_native_multi_node_groups_of_their_own():
    result = plan(
        model("Llama-3.1-70B-Instruct"),
        nodes(4, 8, H100),
        PlanOptions(tensor_parallel_size=8, pipeline_parallel_size=2, data_parallel_size=2),
    )
    assert shape(result.serving_groups) == [(["node1", "node2"], [0], 1, []), (["node3", "node4"], [1], 1, [])]
    assert [group["endpoint_node"] for group in result.serving_groups] == ["node1", "node3"]
    assert [node["name"] for node in result.nodes] == ["node1", "node2", "node3", "node4"]


def test_a_whole_node_group_next_to_a_spanning_replica():
    cluster = [
        ClusterNode("node1", 4, **H100),
        ClusterNode("node2", 2, **H100),
        ClusterNode("node3", 2, **H100),
    ]
    result = plan(model("Qwen3-8B"), cluster, PlanOptions(tensor_parallel_size=4, data_parallel_size=2))
    assert shape(result.serving_groups) == [(["node1"], [0], 1, []), (["node2", "node3"], [1], 1, [])]


def test_one_replica_is_one_group_of_every_node_and_the_arguments_stay_as_they_were():
    result = plan(model("Llama-3.1-70B-Instruct"), nodes(2, 4, H100), PlanOptions(tensor_parallel_size=8))
    assert shape(result.serving_groups) == [(["node1", "node2"], [0], 1, [])]
    assert result.vllm_args == [
        "--tensor-parallel-size",
        "8",
        "--pipeline-parallel-size",
        "1",
        "--max-model-len",
        str(result.max_model_len),
        "--gpu-memory-utilization",
        "0.9",
    ]


def test_a_replica_spanning_a_node_that_holds_another_replica_is_refused():
    # 3 x 8 GPUs, 12 per replica: replica 0 takes node1 and half of node2, replica 1 the rest.
    with pytest.raises(PlanError) as error:
        plan(
            model("Llama-3.1-70B-Instruct"),
            nodes(3, 8, H100),
            PlanOptions(tensor_parallel_size=4, pipeline_parallel_size=3, data_parallel_size=2),
        )
    assert error.value.field == "data_parallel_size"
    message = str(error.value)
    assert "puts replica 0 on node1, node2, and node2 also holds replica 1" in message
    assert "divides 8 or is a multiple of it, or data_parallel_size 1" in message


def test_a_single_node_replica_sharing_a_node_with_a_spanning_one_is_refused():
    # 2 x 6 GPUs, 4 per replica: replica 1 takes node1's last two GPUs and node2's first two.
    with pytest.raises(PlanError) as error:
        plan(model("Qwen3-8B"), nodes(2, 6, H100), PlanOptions(tensor_parallel_size=4, data_parallel_size=3))
    assert error.value.field == "data_parallel_size"
    assert "puts replica 1 on node1, node2" in str(error.value)


def test_moe_replicas_on_several_servers_are_refused():
    with pytest.raises(PlanError) as error:
        plan(
            model("Mixtral-8x7B-Instruct-v0.1"),
            nodes(2, 4, H100),
            PlanOptions(tensor_parallel_size=2, data_parallel_size=4),
        )
    assert error.value.field == "data_parallel_size"
    message = str(error.value)
    assert "mixture-of-experts" in message and "on 2 separate vLLM servers (node1, node2)" in message
    assert "Use data_parallel_size 2 or less, so that all replicas run in one server on node1." in message


def test_moe_replicas_within_one_node_stay_one_vllm_data_parallel_server():
    options = PlanOptions(tensor_parallel_size=2, data_parallel_size=2)
    result = plan(model("Mixtral-8x7B-Instruct-v0.1"), nodes(1, 4, H100), options)
    assert shape(result.serving_groups) == [(["node1"], [0, 1], 2, ["--data-parallel-size", "2"])]


# --- plan_diff with serving groups --------------------------------------------------------------------------


def test_a_plan_json_written_before_serving_groups_existed_compares_unchanged():
    current = stored(plan(model("Llama-3.1-70B-Instruct"), nodes(2, 4, H100), PlanOptions(tensor_parallel_size=8)))
    previous = {key: value for key, value in current.items() if key != "serving_groups"}
    comparison = compare_plans(previous, current)
    assert comparison["changed"] is False and comparison["differences"] == []


def test_going_from_one_replica_to_two_restarts_and_shows_the_sizes():
    cluster = nodes(2, 1, H100)
    previous = stored(plan(model("Qwen3-8B"), cluster, PlanOptions(tensor_parallel_size=2)))
    current = stored(plan(model("Qwen3-8B"), cluster, PlanOptions(tensor_parallel_size=1, data_parallel_size=2)))
    comparison = compare_plans(previous, current)
    assert comparison["changed"] is True
    assert {"tensor_parallel_size", "data_parallel_size", "vllm args"} <= set(comparison["differences"])


# --- each node's role --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_spanning_replicas():
    return stored(
        plan(
            model("Llama-3.1-70B-Instruct"),
            nodes(4, 8, H100),
            PlanOptions(tensor_parallel_size=8, pipeline_parallel_size=2, data_parallel_size=2),
        )
    )


def test_rank_nnodes_and_master_are_per_group(two_spanning_replicas):
    roles = {name: node_role(two_spanning_replicas, name) for name in ("node1", "node2", "node3", "node4")}
    assert [(role["group"]["index"], role["node_rank"], role["nnodes"]) for role in roles.values()] == [
        (0, 0, 2),
        (0, 1, 2),
        (1, 0, 2),
        (1, 1, 2),
    ]
    assert [role["master_host"] for role in roles.values()] == ["node1", "node1", "node3", "node3"]
    assert [role["endpoint"] for role in roles.values()] == [True, False, True, False]
    assert [role["endpoint_host"] for role in roles.values()] == ["node1", "node1", "node3", "node3"]
    assert {role["head_host"] for role in roles.values()} == {"node1"}


def test_a_host_the_plan_does_not_use_runs_nothing(two_spanning_replicas):
    role = node_role(two_spanning_replicas, "node5")
    assert role == {
        "group": None,
        "node_rank": -1,
        "nnodes": 0,
        "master_host": "node1",
        "endpoint": False,
        "endpoint_host": "node1",
        "head_host": "node1",
    }


def test_an_older_plan_without_groups_is_one_group_of_all_its_nodes():
    # An /etc/llmserve/plan.json from before serving groups: DP 2 in one server, its flag in vllm_args.
    older = {
        "data_parallel_size": 2,
        "nodes": [{"name": "node1"}, {"name": "node2"}],
        "vllm_args": ["--tensor-parallel-size", "1", "--data-parallel-size", "2"],
    }
    assert plan_serving_groups(older) == [
        {
            "nodes": ["node1", "node2"],
            "replicas": [0, 1],
            "data_parallel_size": 2,
            "endpoint_node": "node1",
            "vllm_args": [],
            "index": 0,
        }
    ]
    assert (node_role(older, "node2")["node_rank"], node_role(older, "node2")["nnodes"]) == (1, 2)


def test_a_plan_without_nodes_has_no_endpoint():
    # The llama_cpp backend's plan.json lists devices, not nodes; status.yml then asks the head.
    assert plan_serving_groups({"devices": []})[0]["endpoint_node"] is None


def test_the_filters_are_the_library_functions():
    filters = FilterModule().filters()
    assert filters["node_role"] is node_role
    assert filters["serving_groups"] is plan_serving_groups
