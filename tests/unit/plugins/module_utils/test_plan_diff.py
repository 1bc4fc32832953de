# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Scale-out and decommission comparisons on real plans of a real model config (Llama-3.1-70B)."""

from __future__ import annotations

import json
from pathlib import Path

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import load_model_spec_from_dir
from ansible_collections.llmserve.cluster.plugins.module_utils._parallel_planner import plan
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_diff import compare_plans
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import ClusterNode, PlanOptions

MODELS = Path(__file__).resolve().parents[2] / "fixtures" / "models"
SPEC = load_model_spec_from_dir(str(MODELS / "Llama-3.1-70B-Instruct"))


def plan_for(names, options=None) -> dict:
    cluster = [ClusterNode(name, 4, 24576, "NVIDIA L4") for name in names]
    # What vllm_serve stores and plan_diff reads back: the plan as JSON.
    return json.loads(json.dumps(plan(SPEC, cluster, options or PlanOptions(max_model_len=8192)).to_dict()))


def row(table: str, label: str) -> list:
    line = next(line for line in table.splitlines() if line.startswith("| " + label) or f" {label} " in line)
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_same_plan_again_restarts_nothing():
    before = plan_for(["gpu1", "gpu2"])
    comparison = compare_plans(before, plan_for(["gpu1", "gpu2"]))
    assert comparison["changed"] is False
    assert comparison["differences"] == []
    assert "unchanged" in comparison["table"]


def test_a_node_that_joins_the_pipeline_changes_the_plan_and_is_shown_side_by_side():
    before, after = plan_for(["gpu1", "gpu2"]), plan_for(["gpu1", "gpu2", "gpu3"])
    assert after["pipeline_parallel_size"] == 3 != before["pipeline_parallel_size"]
    comparison = compare_plans(before, after)
    assert comparison["changed"] is True
    assert "nodes (rank order)" in comparison["differences"]
    assert "pipeline_parallel_size" in comparison["differences"]
    assert row(comparison["table"], "nodes (rank order) *")[1:] == ["gpu1, gpu2", "gpu1, gpu2, gpu3"]
    assert row(comparison["table"], "pipeline_parallel_size *")[1:] == ["2", "3"]
    # Every line of the box has the same width: the two plans line up.
    assert len({len(line) for line in comparison["table"].splitlines()}) == 1


def test_a_spare_node_leaves_the_plan_and_serving_alone():
    # The explicit sizes keep the plan on two nodes; a third adds a spare only.
    options = PlanOptions(max_model_len=8192, tensor_parallel_size=4, pipeline_parallel_size=2)
    before = plan_for(["gpu1", "gpu2"], options)
    after = plan_for(["gpu1", "gpu2", "gpu3"], options)
    comparison = compare_plans(before, after)
    assert comparison["changed"] is False
    assert [node["name"] for node in after["nodes"]] == ["gpu1", "gpu2"]


def test_only_informative_fields_do_not_restart():
    before = plan_for(["gpu1", "gpu2"])
    after = dict(before, kv_cache_tokens=before["kv_cache_tokens"] + 16)
    comparison = compare_plans(before, after)
    assert comparison["changed"] is False
    assert comparison["differences"] == ["kv cache tokens"]
    assert row(comparison["table"], "kv cache tokens *")[1:] == [
        "{:,}".format(before["kv_cache_tokens"]),
        "{:,}".format(after["kv_cache_tokens"]),
    ]


def test_nothing_in_effect_is_a_first_deployment():
    comparison = compare_plans(None, plan_for(["gpu1", "gpu2"]))
    assert comparison["changed"] is True and comparison["first"] is True
    assert row(comparison["table"], "tensor_parallel_size")[1] == "(none)"
