# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The release-dependent terms, engine flags, margins, CPU workers and expert parallel, through plan()."""

from __future__ import annotations

import pytest
from planner_observations import MODELS, load_document

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import GIB, load_model_spec_from_dir
from ansible_collections.llmserve.cluster.plugins.module_utils._parallel_planner import NoFitError, plan
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import (
    ClusterNode,
    PlanError,
    PlanOptions,
    parse_cluster,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_memory import cuda_graph_estimate_bytes
from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_releases import cuda_graph_estimate_spread

DOCUMENT = load_document()
A100_40GB = [ClusterNode("node1", 1, 40960, "NVIDIA A100-SXM4-40GB")]


def _spec(name):
    return load_model_spec_from_dir(str(MODELS / name))


@pytest.mark.parametrize("observation", DOCUMENT["cpu_observations"], ids=lambda observation: observation["id"])
def test_cpu_workers_plan_the_kv_tokens_vllm_cpu_logs(observation):
    result = plan(
        _spec(observation["model"]),
        parse_cluster(observation["cluster"]),
        PlanOptions(
            max_model_len=observation["max_model_len"],
            tensor_parallel_size=observation["tensor_parallel_size"],
            vllm_version=observation["vllm_version"],
        ),
    )
    assert result.kv_cache_tokens == observation["reported_kv_cache_tokens"]
    assert result.env["VLLM_CPU_KVCACHE_SPACE"] == str(observation["kv_cache_space_gib"])


def test_a_cpu_node_plans_the_whole_gib_it_sets_not_its_described_memory():
    # 1.5 GiB described: the plan sets VLLM_CPU_KVCACHE_SPACE=1, so vllm-cpu holds 1 GiB / 2048 bytes per token.
    cpu = [ClusterNode("node1", 1, 1536, "cpu")]
    result = plan(_spec("tiny-llama"), cpu, PlanOptions(max_model_len=256, vllm_version="0.32.0"))
    assert result.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert result.kv_cache_tokens == GIB // 2048


@pytest.mark.parametrize(
    "entry",
    [entry for entry in DOCUMENT["cuda_graph_estimates"] if entry["num_layers"]],
    ids=lambda entry: entry["what"][:40],
)
def test_graph_estimate_and_its_spread_cover_what_vllm_logged(entry):
    graphs = entry["piecewise_graphs"] + entry["full_graphs"]
    estimate = cuda_graph_estimate_bytes(entry["num_layers"], graphs)
    spread = cuda_graph_estimate_spread(graphs, estimate, extrapolated=True)
    assert estimate - spread <= entry["estimated_gib"] * GIB <= estimate + spread


def test_from_0_20_the_graph_estimate_comes_off_the_kv_cache_unless_eager():
    spec = _spec("Qwen3-8B")
    options = dict(max_model_len=40960, gpu_memory_utilization=0.9)
    before = plan(spec, A100_40GB, PlanOptions(vllm_version="0.19.1", **options))
    after = plan(spec, A100_40GB, PlanOptions(vllm_version="0.20.0", **options))
    eager = plan(spec, A100_40GB, PlanOptions(vllm_version="0.20.0", extra_args=("--enforce-eager",), **options))
    estimate = after.pipeline_stages[0]["cuda_graph_estimate_bytes"]
    assert estimate > 0.3 * GIB
    assert before.per_gpu["kv_cache_bytes"] - after.per_gpu["kv_cache_bytes"] == estimate
    assert eager.per_gpu["kv_cache_bytes"] == before.per_gpu["kv_cache_bytes"]
    assert "--enforce-eager" in eager.vllm_args


def test_the_release_default_utilization_is_planned_and_passed_on():
    result = plan(_spec("Qwen3-8B"), A100_40GB, PlanOptions(max_model_len=8192, vllm_version="0.29.0"))
    assert result.gpu_memory_utilization == 0.92
    assert result.vllm_args[result.vllm_args.index("--gpu-memory-utilization") + 1] == "0.92"


def test_cpu_offload_moves_weights_off_each_gpu():
    spec = _spec("Qwen3-8B")
    plain = plan(spec, A100_40GB, PlanOptions(max_model_len=8192, vllm_version="0.19.1"))
    offloaded = plan(
        spec, A100_40GB, PlanOptions(max_model_len=8192, vllm_version="0.19.1", extra_args=("--cpu-offload-gb", "4"))
    )
    assert plain.per_gpu["weights_bytes"] - offloaded.per_gpu["weights_bytes"] == 4 * GIB
    assert offloaded.per_gpu["kv_cache_bytes"] - plain.per_gpu["kv_cache_bytes"] == 4 * GIB


def test_runtime_fp8_quantization_from_extra_args_halves_the_weights_and_is_passed_on():
    spec = _spec("Llama-3.1-70B-Instruct")
    h100 = [ClusterNode("node1", 2, 81559, "NVIDIA H100 80GB HBM3")]
    # In bf16 the model leaves one request's worth of KV cache on no layout of two H100s.
    with pytest.raises(NoFitError):
        plan(spec, h100, PlanOptions(max_model_len=16000, vllm_version="0.11.0"))
    result = plan(spec, h100, PlanOptions(max_model_len=16000, vllm_version="0.11.0", extra_args=("-q", "fp8")))
    # 67.7 GiB of FP8 weights do not fit one H100 (vLLM logs -1.44 GiB of KV cache): TP 2, 33.88 GiB a GPU in the log.
    assert result.tensor_parallel_size == 2
    assert result.per_gpu["weights_bytes"] / GIB == pytest.approx(33.88, abs=0.1)
    assert result.vllm_args[result.vllm_args.index("--quantization") + 1] == "fp8"


def test_near_the_edge_the_margin_is_reported_and_an_uncertain_fit_says_what_is_safe():
    spec = _spec("Qwen3-32B")
    h100 = [ClusterNode("node1", 1, 81559, "NVIDIA H100 80GB HBM3")]
    roomy = plan(spec, h100, PlanOptions(max_model_len=8192, vllm_version="0.11.0", block_size=128))
    assert not roomy.margin["uncertain"]
    assert roomy.margin["margin_tokens"] == roomy.kv_cache_tokens - 8192
    tight = plan(spec, h100, PlanOptions(max_model_len=17024, vllm_version="0.11.0", block_size=128))
    assert tight.margin["uncertain"]
    assert 0 <= tight.margin["margin_bytes"] < tight.margin["error_bound_bytes"]
    warning = next(text for text in tight.warnings if "error bound" in text)
    safe = int(warning.split("Safe: max_model_len ")[1].split(" ")[0].replace(",", ""))
    # The setting it names leaves at least the error bound free.
    checked = plan(spec, h100, PlanOptions(max_model_len=safe, vllm_version="0.11.0", block_size=128))
    assert checked.margin["margin_bytes"] >= checked.margin["error_bound_bytes"] - 128 * checked.kv_bytes_per_token
    assert not any("error bound" in text for text in roomy.warnings)


def test_a_kv_connector_makes_the_verdict_uncertain():
    result = plan(
        _spec("Qwen3-8B"),
        A100_40GB,
        PlanOptions(
            max_model_len=8192,
            vllm_version="0.19.1",
            extra_args=("--kv-transfer-config", '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}'),
        ),
    )
    assert result.margin["uncertain"] and result.margin["not_modelled"] == ["kv_transfer_config"]
    assert any("LMCacheConnectorV1" in text for text in result.warnings)


# --- expert parallel: DeepSeek R1 671B on the seed deployments ---------------------------------------


@pytest.mark.parametrize(
    "nodes, gpu_name, memory_mib",
    [(2, "NVIDIA H100 80GB HBM3", 81559), (4, "NVIDIA A800-SXM4-80GB", 81920), (8, "NVIDIA A100-SXM4-40GB", 40960)],
)
def test_r1_expert_parallel_across_nodes_gives_its_capacity_and_says_why_it_is_not_deployed(
    nodes, gpu_name, memory_mib
):
    cluster = [ClusterNode(f"node{index}", 8, memory_mib, gpu_name) for index in range(nodes)]
    options = PlanOptions(
        max_model_len=32768,
        vllm_version="0.32.0",
        tensor_parallel_size=8,
        data_parallel_size=nodes,
        enable_expert_parallel=True,
    )
    with pytest.raises(PlanError) as error:
        plan(_spec("DeepSeek-R1"), cluster, options)
    message = str(error.value)
    assert error.value.field == "data_parallel_size"
    assert f"EP = TP 8 x DP {nodes} = {8 * nodes}" in message
    assert "KV tokens per replica" in message and "one node only" in message


def test_r1_expert_parallel_on_one_node_is_a_plan_with_the_flag():
    h200 = [ClusterNode("node1", 8, 143771, "NVIDIA H200")]
    options = PlanOptions(
        max_model_len=32768,
        vllm_version="0.32.0",
        tensor_parallel_size=1,
        data_parallel_size=8,
        enable_expert_parallel=True,
    )
    result = plan(_spec("DeepSeek-R1"), h200, options)
    assert "--enable-expert-parallel" in result.vllm_args
    assert result.serving_groups[0]["vllm_args"] == ["--data-parallel-size", "8"]
    # Every GPU holds the attention and dense layers whole and a 1/8 share of the experts.
    assert 85 * GIB < result.per_gpu["weights_bytes"] < 100 * GIB
    assert result.kv_cache_tokens > 32768


def test_expert_parallel_needs_a_mixture_of_experts_model():
    with pytest.raises(PlanError) as error:
        plan(
            _spec("Qwen3-8B"),
            A100_40GB,
            PlanOptions(vllm_version="0.32.0", tensor_parallel_size=1, enable_expert_parallel=True),
        )
    assert error.value.field == "enable_expert_parallel"
