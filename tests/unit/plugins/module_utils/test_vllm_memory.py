# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Each worker's memory and KV cache: page sizes per token, what CUDA reports, the profile run's batch."""

from __future__ import annotations

import pytest
from planner_fixtures import A800, H100, model, nodes

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import GIB
from ansible_collections.llmserve.cluster.plugins.module_utils._parallel_planner import plan
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import ClusterNode, PlanOptions
from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_layouts import Layout
from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_memory import (
    evaluate,
    kv_bytes_per_token_per_layer,
)

# --- KV cache bytes ---------------------------------------------------------------------------------------


def test_gqa_kv_bytes_split_over_tp():
    llama = model("Llama-3.1-70B-Instruct")
    # 2 (K and V) x 8/4 KV heads x 128 x 2 bytes per layer, times 80 layers = 81,920 bytes per token and GPU.
    assert kv_bytes_per_token_per_layer(llama, 4, "auto") * 80 == 81920
    assert kv_bytes_per_token_per_layer(llama, 16, "auto") == 2 * 1 * 128 * 2  # replicated, not below one head
    assert kv_bytes_per_token_per_layer(llama, 4, "fp8") == 2 * 2 * 128


def test_mla_kv_is_one_latent_head_on_every_rank():
    deepseek = model("DeepSeek-R1")
    assert kv_bytes_per_token_per_layer(deepseek, 1, "auto") == 576 * 2
    assert kv_bytes_per_token_per_layer(deepseek, 8, "auto") == 576 * 2  # no factor 2, no split by TP
    assert kv_bytes_per_token_per_layer(deepseek, 8, "fp8") == 576
    assert kv_bytes_per_token_per_layer(deepseek, 8, "fp8_ds_mla") == 656


# --- worker memory ----------------------------------------------------------------------------------------


# Every real vLLM log the memory model is checked against: test_planner_observations.py.


def test_budget_uses_what_cuda_sees_not_what_nvml_reports():
    spec = model("Qwen3-8B")
    layout = Layout(1, 1, 1, [nodes(1, 1, H100)])
    stage = evaluate(spec, layout, PlanOptions(), spec.max_model_len, (8192, 1024)).stages[0]
    assert stage.cuda_total_bytes / GIB == pytest.approx(79.18, abs=0.01)
    assert stage.budget_bytes == int(0.9 * stage.cuda_total_bytes)


def test_vllm_batch_defaults_depend_on_the_gpu():
    on_h100 = plan(model("Qwen3-8B"), nodes(1, 1, H100), PlanOptions())
    on_a100 = plan(
        model("Qwen3-8B"), nodes(1, 1, dict(gpu_memory_mib=81920, gpu_name="NVIDIA A100-SXM4-80GB")), PlanOptions()
    )
    assert (on_h100.max_num_batched_tokens, on_h100.max_num_seqs) == (8192, 1024)
    assert (on_a100.max_num_batched_tokens, on_a100.max_num_seqs) == (2048, 256)
    # The smaller profile run leaves the A100 more KV cache although its budget is about the same.
    assert on_a100.kv_cache_tokens > on_h100.kv_cache_tokens
    explicit = plan(model("Qwen3-8B"), nodes(1, 1, H100), PlanOptions(max_num_batched_tokens=2048, max_num_seqs=256))
    assert explicit.per_gpu["activation_bytes"] < on_h100.per_gpu["activation_bytes"]
    assert "--max-num-batched-tokens" in explicit.vllm_args


def test_kv_cache_is_the_smallest_worker_in_16_token_blocks():
    cluster = [
        ClusterNode("big", 1, 81559, "NVIDIA H100 80GB HBM3"),
        ClusterNode("small", 1, 40960, "NVIDIA A100-SXM4-40GB"),
    ]
    result = plan(model("Llama-3.1-8B-Instruct"), cluster, PlanOptions(pipeline_parallel_size=2))
    stage_tokens = [stage["kv_cache_tokens"] for stage in result.pipeline_stages]
    assert result.kv_cache_tokens == min(stage_tokens) == stage_tokens[1]
    assert result.kv_cache_tokens % 16 == 0
    assert any("differ in memory" in warning for warning in result.warnings)


def test_fp8_kv_cache_doubles_the_tokens():
    auto = plan(model("Qwen3-8B"), nodes(1, 1, H100), PlanOptions())
    fp8 = plan(model("Qwen3-8B"), nodes(1, 1, H100), PlanOptions(kv_cache_dtype="fp8"))
    assert fp8.kv_cache_tokens == pytest.approx(2 * auto.kv_cache_tokens, abs=32)
    assert fp8.vllm_args[-2:] == ["--kv-cache-dtype", "fp8"]


def test_quantized_weights_are_sized_from_the_files():
    result = plan(model("Qwen2-72B-Instruct-AWQ"), nodes(1, 1, A800), PlanOptions())
    assert result.strategy == "single_gpu"
    # 41.46 GB of AWQ files, not the 145 GB the parameter count would suggest in fp16.
    assert result.per_gpu["weights_bytes"] == pytest.approx(41_464_774_656, rel=0.01)
