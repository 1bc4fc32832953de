# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""vLLM's checks on parallel sizes and its pipeline layer split, against real model configs."""

from __future__ import annotations

import pytest
from planner_fixtures import model

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import parse_config
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import PlanError
from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_layouts import (
    get_pp_indices,
    pp_layer_partition,
    tensor_parallel_problem,
)

# --- vLLM's layer placement -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layers, stages, expected",
    [
        (61, 4, [15, 15, 16, 15]),
        (80, 3, [27, 27, 26]),
        (32, 6, [5, 5, 5, 6, 6, 5]),
        (40, 2, [20, 20]),
        (61, 8, [7, 7, 8, 8, 8, 8, 8, 7]),
        (7, 7, [1] * 7),
    ],
)
def test_pp_partition_matches_get_pp_indices(layers, stages, expected):
    assert pp_layer_partition(layers, stages) == expected
    starts = [get_pp_indices(layers, rank, stages) for rank in range(stages)]
    assert [end - start for start, end in starts] == expected
    assert starts[0][0] == 0 and starts[-1][1] == layers


def test_get_pp_indices_of_one_rank():
    assert get_pp_indices(61, 2, 4) == (30, 46)


def test_more_stages_than_layers_is_refused():
    with pytest.raises(PlanError) as error:
        pp_layer_partition(4, 5)
    assert error.value.field == "pipeline_parallel_size"


# --- what vLLM accepts ------------------------------------------------------------------------------------


def test_heads_must_divide_by_tp():
    assert "num_attention_heads (40)" in tensor_parallel_problem(model("Qwen-14B-Chat"), 3)
    assert tensor_parallel_problem(model("Qwen-14B-Chat"), 4) is None


def test_kv_heads_divide_or_are_replicated():
    llama = model("Llama-3.1-70B-Instruct")  # 64 heads, 8 KV heads
    assert tensor_parallel_problem(llama, 16) is None  # 16 is a multiple of 8: each KV head on 2 GPUs
    assert tensor_parallel_problem(llama, 4) is None
    twelve_kv_heads = parse_config(_llama_like(heads=48, kv_heads=12, vocab=32000))
    assert "num_key_value_heads (12) must be divisible by tensor_parallel_size (8)" in tensor_parallel_problem(
        twelve_kv_heads, 8
    )
    assert "tensor_parallel_size (16) must be a multiple of num_key_value_heads (12)" in tensor_parallel_problem(
        twelve_kv_heads, 16
    )


def test_padded_vocabulary_must_split_over_tp():
    spec = parse_config(_llama_like(heads=48, kv_heads=48, vocab=32000))
    assert "padded to a multiple of 64 (32000)" in tensor_parallel_problem(spec, 3)


def test_awq_group_size_against_the_tp_shard_of_down_proj():
    spec = model("Qwen2-72B-Instruct-AWQ")  # intermediate 29568 = 128 x 231 (vllm#5675)
    for tp in (2, 4, 8):
        assert "group_size 128 does not divide down_proj's input" in tensor_parallel_problem(spec, tp)
    assert tensor_parallel_problem(spec, 1) is None


def test_fp8_block_quantization_is_checked_per_shard():
    assert tensor_parallel_problem(model("DeepSeek-R1"), 8) is None
    assert tensor_parallel_problem(model("DeepSeek-R1"), 32) is not None  # 2048 / 32 = 64 < one 128 block


def _llama_like(heads=32, kv_heads=8, vocab=128256, layers=32, hidden=4096):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": 14336,
        "vocab_size": vocab,
        "max_position_embeddings": 8192,
        "torch_dtype": "bfloat16",
    }
