# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Batch layouts from real plans: the planner's answer for real model configs on real GPU shapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._batch_inference import (
    BatchPlanError,
    batch_layout,
    describe,
    layout_warnings,
    plan_engine_arguments,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._parallel_planner import plan_from_params

MODELS = Path(__file__).resolve().parents[2] / "fixtures" / "models"
H100_NODE = dict(gpus=8, gpu_memory_mib=81559, gpu_name="NVIDIA H100 80GB HBM3")
# The sandbox's group_vars: each host one CPU "device" of 1 GiB KV cache.
CPU_NODE = dict(gpus=1, gpu_memory_mib=1024, gpu_name="cpu")


def cluster(count, node):
    return [dict(name=f"node{index + 1}", **node) for index in range(count)]


def real_plan(model, nodes, **options):
    return plan_from_params(dict(model_dir=str(MODELS / model), cluster=nodes, **options)).to_dict()


def test_sandbox_plan_with_tp_1_runs_one_cpu_instance_per_host():
    nodes = cluster(2, CPU_NODE)
    plan = real_plan("tiny-llama", nodes, tensor_parallel_size=2, max_model_len=256)
    layout = batch_layout(nodes, plan, tensor_parallel_size=1)
    assert layout["device"] == "cpu"
    assert (layout["num_instances"], layout["tensor_parallel_size"], layout["pipeline_parallel_size"]) == (2, 1, 1)
    assert layout["placement"] == {"bundles": [], "strategy": ""}
    # The plan's KV space on CPU reaches the instances; its context length becomes an engine argument.
    assert layout["environment"] == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    assert layout["engine_arguments"]["max_model_len"] == 256
    assert "tensor_parallel_size" not in layout["engine_arguments"]
    assert layout_warnings(layout) == []


def test_cpu_instances_cannot_span_workers():
    nodes = cluster(2, CPU_NODE)
    plan = real_plan("tiny-llama", nodes, tensor_parallel_size=2, max_model_len=256)
    with pytest.raises(BatchPlanError) as error:
        batch_layout(nodes, plan)
    assert error.value.field == "tensor_parallel_size"
    assert "does not support ray" in str(error.value)


def test_the_plans_tp_8_on_two_h100_nodes_gives_two_instances_with_a_placement_group_each():
    nodes = cluster(2, H100_NODE)
    plan = real_plan("Llama-3.1-70B-Instruct", nodes, max_model_len=32768, tensor_parallel_size=8)
    layout = batch_layout(nodes, plan)
    assert layout["device"] == "gpu"
    assert (layout["num_instances"], layout["gpus_per_instance"], layout["total_gpus"]) == (2, 8, 16)
    assert layout["placement"]["strategy"] == "STRICT_PACK"
    assert len(layout["placement"]["bundles"]) == 8
    assert all(bundle["GPU"] == 1.0 for bundle in layout["placement"]["bundles"])
    assert layout["engine_arguments"]["max_model_len"] == 32768
    assert layout["engine_arguments"]["gpu_memory_utilization"] == 0.9
    assert describe(layout).endswith("one STRICT_PACK placement group per instance")


def test_a_smaller_tp_than_the_plans_fills_the_cluster_with_more_instances():
    nodes = cluster(2, H100_NODE)
    plan = real_plan("Llama-3.1-70B-Instruct", nodes, max_model_len=32768, tensor_parallel_size=8)
    layout = batch_layout(nodes, plan, tensor_parallel_size=4)
    assert (layout["num_instances"], layout["gpus_per_instance"]) == (4, 4)
    assert len(layout["placement"]["bundles"]) == 4


def test_one_gpu_instances_need_no_placement_group():
    nodes = cluster(2, H100_NODE)
    plan = real_plan("Qwen2.5-0.5B-Instruct", nodes)
    assert plan["tensor_parallel_size"] == 1
    layout = batch_layout(nodes, plan)
    assert layout["num_instances"] == 16
    assert layout["placement"]["bundles"] == []


def test_an_instance_larger_than_a_node_packs_across_nodes():
    # Qwen-14B-Chat spans two single-A10 nodes as PP 2 (the seed tutorial's layout); four nodes hold two.
    a10 = dict(gpus=1, gpu_memory_mib=23028, gpu_name="NVIDIA A10")
    nodes = cluster(4, a10)
    plan = real_plan("Qwen-14B-Chat", nodes, pipeline_parallel_size=2)
    assert (plan["tensor_parallel_size"], plan["pipeline_parallel_size"]) == (1, 2)
    layout = batch_layout(nodes, plan)
    assert layout["num_instances"] == 2
    assert layout["placement"]["strategy"] == "PACK"
    assert len(layout["placement"]["bundles"]) == 2


def test_a_pipeline_size_other_than_the_plans_drops_its_layer_partition():
    plan = {"tensor_parallel_size": 1, "pipeline_parallel_size": 6, "env": {"VLLM_PP_LAYER_PARTITION": "5,5,5,6,6,5"}}
    nodes = cluster(1, dict(gpus=6, gpu_memory_mib=24564, gpu_name="NVIDIA GeForce RTX 4090"))
    assert batch_layout(nodes, plan)["environment"] == {"VLLM_PP_LAYER_PARTITION": "5,5,5,6,6,5"}
    layout = batch_layout(nodes, plan, pipeline_parallel_size=3)
    assert layout["environment"] == {}
    assert layout["num_instances"] == 2


def test_more_instances_than_the_cluster_holds_are_refused():
    nodes = cluster(2, H100_NODE)
    with pytest.raises(BatchPlanError) as error:
        batch_layout(nodes, {}, tensor_parallel_size=8, num_instances=3)
    assert error.value.field == "num_instances"
    assert "at most 2 instances" in str(error.value)


def test_an_instance_larger_than_the_cluster_is_refused():
    with pytest.raises(BatchPlanError, match="needs 16 GPUs"):
        batch_layout(cluster(1, H100_NODE), {}, tensor_parallel_size=8, pipeline_parallel_size=2)


def test_fewer_instances_than_possible_leave_gpus_idle_with_a_warning():
    layout = batch_layout(cluster(2, H100_NODE), {}, tensor_parallel_size=4, num_instances=3)
    assert layout["num_instances"] == 3
    assert layout_warnings(layout) == ["4 GPU(s) of the cluster stay idle with this layout."]


def test_plan_arguments_become_llm_keyword_arguments():
    arguments = plan_engine_arguments(
        ["--tensor-parallel-size", "8", "--max-model-len", "4096", "--gpu-memory-utilization", "0.92",
         "--kv-cache-dtype", "fp8", "--data-parallel-size", "2", "--enforce-eager"]
    )  # fmt: skip
    assert arguments == {
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.92,
        "kv_cache_dtype": "fp8",
        "enforce_eager": True,
    }


def test_a_device_name_other_than_the_choices_is_refused():
    with pytest.raises(BatchPlanError) as error:
        batch_layout(cluster(1, H100_NODE), {}, device="tpu")
    assert error.value.field == "device"
