# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The vllm serve flags and environment built from a layout and the user's options."""

from __future__ import annotations

from planner_fixtures import model

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import GIB
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import ClusterNode, PlanOptions
from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_command import vllm_args, vllm_env
from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_layouts import Layout, place

H100_NODE = ClusterNode("gpu-node-01", 8, 81559, "NVIDIA H100 80GB HBM3")
V100_NODE = ClusterNode("gpu-node-02", 8, 32768, "Tesla V100-SXM2-32GB")
CPU_NODE = ClusterNode("node-a", 1, 1024, "cpu")


def test_sizes_and_memory_settings_lead_and_vllm_defaults_stay_unset():
    # The planner passes resolved options: the release's default utilization is filled in by then.
    args = vllm_args(model("Qwen3-8B"), place([H100_NODE], 4, 2, 1), PlanOptions(gpu_memory_utilization=0.9), 40960)
    assert args == [
        "--tensor-parallel-size",
        "4",
        "--pipeline-parallel-size",
        "2",
        "--max-model-len",
        "40960",
        "--gpu-memory-utilization",
        "0.9",
    ]


def test_options_the_user_set_are_passed_on():
    options = PlanOptions(
        gpu_memory_utilization=0.85, kv_cache_dtype="fp8", max_num_batched_tokens=4096, max_num_seqs=64
    )
    args = vllm_args(model("Qwen3-8B"), place([H100_NODE], 1, 1, 1), options, 8192)
    assert args[7:] == [
        "0.85",
        "--kv-cache-dtype",
        "fp8",
        "--max-num-batched-tokens",
        "4096",
        "--max-num-seqs",
        "64",
    ]


def test_bfloat16_model_on_a_gpu_without_bfloat16_runs_in_float16():
    spec = model("Qwen3-8B")  # torch_dtype bfloat16
    assert vllm_args(spec, place([V100_NODE], 8, 1, 1), PlanOptions(), 8192)[-2:] == ["--dtype", "float16"]
    # One such GPU anywhere in the layout decides it: vLLM has a single dtype for all ranks.
    mixed = Layout(1, 2, 1, [[H100_NODE, V100_NODE]])
    assert vllm_args(spec, mixed, PlanOptions(), 8192)[-2:] == ["--dtype", "float16"]
    assert "--dtype" not in vllm_args(spec, place([H100_NODE], 8, 1, 1), PlanOptions(), 8192)


def test_uneven_layer_split_is_spelled_out_for_vllm():
    layout = place([H100_NODE], 1, 6, 1)
    assert vllm_env(layout, [5, 5, 5, 6, 6, 5], 10 * GIB) == {"VLLM_PP_LAYER_PARTITION": "5,5,5,6,6,5"}
    assert vllm_env(layout, [20, 20], 10 * GIB) == {}


def test_cpu_worker_gets_its_kv_cache_in_whole_gib():
    layout = place([CPU_NODE, ClusterNode("node-b", 1, 1024, "cpu")], 2, 1, 1)
    assert vllm_env(layout, [4], int(2.7 * GIB)) == {"VLLM_CPU_KVCACHE_SPACE": "2"}
    # vLLM takes whole GiB; less than one still gets one rather than none.
    assert vllm_env(layout, [4], GIB // 2) == {"VLLM_CPU_KVCACHE_SPACE": "1"}
