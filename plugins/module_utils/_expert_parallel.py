# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Weights per GPU when vLLM serves a mixture-of-experts model with ``--enable-expert-parallel``.

With expert parallel the routed experts are not split across the tensor-parallel ranks: each rank of the
expert-parallel group (EP = TP x DP, the data-parallel replicas' TP groups together) holds whole experts, the
experts divided evenly and the remainder going to the last rank (vllm/model_executor/layers/fused_moe/
expert_map_manager.py ``determine_expert_map``). Everything else (attention, the dense layers, shared experts,
the router, embeddings) stays split over each replica's TP group, and every data-parallel replica keeps its own
copy and its own KV cache.
"""

from __future__ import annotations

from typing import Optional

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import (
    ModelSpec,
    layer_parameters,
    layer_weight_bytes,
)

# vLLM pads the vocabulary to a multiple of 64 before splitting it over TP ranks.
VOCAB_PADDING = 64


def routed_expert_parameters(spec: ModelSpec, layer_index: int) -> int:
    moe = spec.moe
    if moe is None or layer_index not in moe.moe_layers:
        return 0
    return moe.num_experts * 3 * spec.hidden_size * moe.expert_intermediate_size


def experts_on_busiest_rank(num_experts: int, expert_parallel_size: int) -> int:
    """Experts on the rank that holds the most: the even share plus the remainder (the last rank)."""
    return num_experts // expert_parallel_size + num_experts % expert_parallel_size


def expert_parallel_problem(spec: ModelSpec, tensor_parallel_size: int, data_parallel_size: int) -> Optional[str]:
    """Why vLLM cannot run this expert-parallel layout, or None."""
    if spec.moe is None:
        return f"{spec.name} has no routed experts; --enable-expert-parallel applies to mixture-of-experts models"
    expert_parallel_size = tensor_parallel_size * data_parallel_size
    if expert_parallel_size < 2:
        return "expert parallel needs tensor_parallel_size x data_parallel_size of at least 2"
    if expert_parallel_size > spec.moe.num_experts:
        return (
            f"expert parallel size {expert_parallel_size} (TP {tensor_parallel_size} x DP {data_parallel_size}) is "
            f"larger than the {spec.moe.num_experts} routed experts: some ranks would hold none"
        )
    return None


def _non_expert_replicated_share(spec: ModelSpec, layer_index: int, non_expert: int) -> float:
    """Share of a layer's non-expert parameters that every TP rank holds whole (MLA down-projections, router)."""
    replicated = 0
    if spec.mla is not None:
        replicated += spec.hidden_size * ((spec.mla.q_lora_rank or 0) + spec.mla.latent_size)
    if spec.moe is not None and layer_index in spec.moe.moe_layers:
        replicated += spec.hidden_size * spec.moe.num_experts
    return replicated / max(non_expert, 1)


def expert_parallel_stage_weight_bytes(
    spec: ModelSpec, first: int, last: int, tensor_parallel_size: int, data_parallel_size: int, stage: int, stages: int
) -> int:
    """Bytes of weights the busiest GPU of a pipeline stage loads under expert parallel."""
    tp = tensor_parallel_size
    if spec.moe is None:
        raise ValueError(f"{spec.name} has no experts: expert parallel sizes only mixture-of-experts models")
    local = experts_on_busiest_rank(spec.moe.num_experts, tp * data_parallel_size)
    per_layer = layer_weight_bytes(spec)
    total = 0.0
    for index in range(first, last):
        parameters = layer_parameters(spec, index)
        experts = routed_expert_parameters(spec, index)
        expert_bytes = per_layer[index] * experts / max(parameters, 1)
        rest = per_layer[index] - expert_bytes
        replicated = _non_expert_replicated_share(spec, index, parameters - experts)
        total += expert_bytes * local / spec.moe.num_experts + rest * (replicated + (1 - replicated) / tp)
    head = -(-spec.vocab_size // VOCAB_PADDING) * VOCAB_PADDING * spec.hidden_size * spec.dtype_bytes // tp
    if stage == 0:
        total += head
    if stage == stages - 1 and (not spec.tie_word_embeddings or stages > 1):
        total += head
    return int(total)
