# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which GPU holds which rank, on plans the planner makes for real model configs."""

from __future__ import annotations

from pathlib import Path

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import load_model_spec_from_dir
from ansible_collections.llmserve.cluster.plugins.module_utils._parallel_planner import plan
from ansible_collections.llmserve.cluster.plugins.module_utils._placement_view import (
    placement,
    rank_position,
    render_html,
    slot_label,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import ClusterNode, PlanOptions

MODELS = Path(__file__).resolve().parents[2] / "fixtures" / "models"
H100 = dict(gpu_memory_mib=81559, gpu_name="NVIDIA H100 80GB HBM3")


def make_plan(model: str, node_count: int, gpus: int, **options) -> dict:
    spec = load_model_spec_from_dir(str(MODELS / model))
    cluster = [ClusterNode(name=f"node{index + 1}", gpus=gpus, **H100) for index in range(node_count)]
    return plan(spec, cluster, PlanOptions(**options)).to_dict()


def test_tp8_pp2_over_two_h100_nodes_puts_one_stage_on_each_node():
    layout = placement(make_plan("Llama-3.1-70B-Instruct", 2, 8, tensor_parallel_size=8, pipeline_parallel_size=2))
    assert [node["name"] for node in layout] == ["node1", "node2"]
    assert [node["node_rank"] for node in layout] == [0, 1]
    node2 = layout[1]["gpus"]
    assert [slot["rank"] for slot in node2] == list(range(8, 16))
    assert {slot["stage"] for slot in node2} == {1}
    assert [slot["tensor_parallel_rank"] for slot in node2] == list(range(8))
    # 80 layers over 2 stages: [40, 40], the second stage holds layers 40-79.
    assert (node2[0]["first_layer"], node2[0]["last_layer"]) == (40, 79)
    assert slot_label(node2[3]) == "PP 1 · TP 3 · layers 40-79"


def test_data_parallel_replicas_are_numbered_replica_major():
    layout = placement(make_plan("Qwen3-8B", 2, 4, tensor_parallel_size=2, data_parallel_size=4))
    replicas = [[slot["replica"] for slot in node["gpus"]] for node in layout]
    assert replicas == [[0, 0, 1, 1], [2, 2, 3, 3]]
    tensor_ranks = [slot["tensor_parallel_rank"] for node in layout for slot in node["gpus"]]
    assert tensor_ranks == [0, 1] * 4
    assert slot_label(layout[1]["gpus"][3], data_parallel_size=4).startswith("DP 3 · PP 0 · TP 1")


def test_gpus_the_plan_does_not_use_are_spare():
    small = make_plan("Qwen2.5-0.5B-Instruct", 1, 8)
    assert small["tensor_parallel_size"] == 1
    slots = placement(small)[0]["gpus"]
    assert len(slots) == 8
    assert slots[0]["rank"] == 0
    assert [slot["rank"] for slot in slots[1:]] == [None] * 7
    assert slot_label(slots[5]) == "spare"


def test_rank_position_follows_dp_pp_tp_order():
    sizes = {"tensor_parallel_size": 4, "pipeline_parallel_size": 2, "data_parallel_size": 2, "world_size": 8}
    assert rank_position(13, sizes) == {"rank": 13, "replica": 1, "stage": 1, "tensor_parallel_rank": 1}
    assert rank_position(9, sizes) == {"rank": 9, "replica": 1, "stage": 0, "tensor_parallel_rank": 1}
    assert rank_position(7, sizes) == {"rank": 7, "replica": 0, "stage": 1, "tensor_parallel_rank": 3}


def test_html_page_is_self_contained_and_shows_every_gpu_with_its_stage():
    tp8_pp2 = make_plan("Llama-3.1-70B-Instruct", 2, 8, tensor_parallel_size=8, pipeline_parallel_size=2)
    nodes = [
        {
            "name": name,
            "address": address,
            "reachable": name == "node1",
            "devices": [
                {"index": index, "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559, "memory_used_mib": 74000}
                for index in range(8)
            ],
            "units": {"vllm.service": "active" if name == "node1" else "inactive"},
        }
        for name, address in (("node2", "10.0.0.12"), ("node1", "10.0.0.11"))
    ]
    page = render_html(tp8_pp2, nodes, endpoint={"url": "http://10.0.0.11:8000"}, problems=["vllm.service <stopped>"])
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "http-equiv" not in page and "<link" not in page
    # Cards come in node-rank order whatever the inventory order.
    assert page.index("<h2>node1</h2>") < page.index("<h2>node2</h2>")
    assert page.count('class="gpu"') == 16
    assert page.count("PP 1 · TP 7 · layers 40-79") == 1
    assert "74000 / 81559 MiB" in page
    assert 'class="node down"' in page and "UNREACHABLE" in page
    # Problems are text, never markup.
    assert "vllm.service &lt;stopped&gt;" in page


def test_html_without_a_plan_still_draws_the_described_devices():
    nodes = [{"name": "node1", "devices": [{"index": 0, "name": "cpu", "memory_total_mib": 1024}], "units": {}}]
    page = render_html(None, nodes)
    assert "plan in effect: unknown" in page
    assert page.count('class="gpu"') == 1 and "spare" in page and "? / 1024 MiB" in page
