# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Decide how vLLM splits a model over GPUs and nodes, and how much KV cache each worker ends up with.

Strategy (vLLM's distributed-serving guide): one GPU when the model fits one; otherwise tensor parallel
over the GPUs of one node; otherwise tensor parallel within nodes and pipeline parallel across them; and
when a node's GPU count does not divide the attention heads, pipeline parallel over its GPUs instead.

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
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import (
    GIB,
    FetchFile,
    FetchParameterCount,
    ModelSpec,
    layer_parameters,
    layer_weight_bytes,
    load_model_spec_from_dir,
    load_model_spec_from_hub,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_table import render_plan

MIB = 1024**2

STRATEGIES = ("single_gpu", "tensor_parallel", "tensor_pipeline_parallel", "pipeline_parallel")

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

DEFAULT_BLOCK_SIZE = 16
# vLLM pads the vocabulary to a multiple of 64 before splitting embeddings and the output head over TP.
VOCAB_PADDING = 64
# AWQ and GPTQ pack eight 4-bit values into one int32 along the packed dimension.
INT4_PACK_FACTOR = 8

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


@dataclass(frozen=True)
class GpuKind:
    """What the planner knows about a GPU model beyond what NVML says."""

    fragment: str
    # NVML total minus the total torch.cuda.mem_get_info() reports: the frame buffer the driver keeps for
    # itself (GSP firmware heap, page tables, ECC bookkeeping). Observed on idle GPUs.
    reserved_mib: int
    bfloat16: bool = True
    # Hopper boards whose GPUs meet in NVSwitches, where NCCL sets up NVLink SHARP buffers (not the PCIe or NVL cards).
    nvswitch: bool = False
    vllm_supported: bool = True
    min_total_mib: int = 0


# Matched against the words of the NVML name, first match wins (so the 80 GB A100 comes before the 40 GB one).
# Each reserve is NVML total minus a CUDA total seen in public logs; the sources are listed in
# tests/unit/fixtures/planner/README.md. Drivers move these by up to ~0.2 GiB (H100 logs show 79.11-79.33 GiB).
GPU_KINDS = (
    GpuKind("gh200", 606, nvswitch=True),
    GpuKind("h200", 606, nvswitch=True),
    GpuKind("h100", 479, nvswitch=True),
    GpuKind("h800", 479, nvswitch=True),
    GpuKind("h20", 591, nvswitch=True),
    GpuKind("a100", 870, min_total_mib=60000),
    GpuKind("a800", 870, min_total_mib=60000),
    GpuKind("a100", 625),
    GpuKind("a800", 625),
    GpuKind("pro 6000", 598),
    GpuKind("l40s", 613),
    GpuKind("l40", 613),
    GpuKind("l20", 480),
    GpuKind("a40", 654),
    GpuKind("a6000", 459),
    GpuKind("6000 ada", 480),
    GpuKind("a10g", 520),
    GpuKind("a10", 316),
    GpuKind("l4", 547),
    GpuKind("4090", 357),
    GpuKind("3090", 318),
    GpuKind("v100", 256, bfloat16=False, min_total_mib=20000),
    GpuKind("v100", 0, bfloat16=False),
    GpuKind("t4", 256, bfloat16=False),
    GpuKind("2080", 300, bfloat16=False),
    GpuKind("p40", 0, bfloat16=False, vllm_supported=False),
    GpuKind("p100", 0, bfloat16=False, vllm_supported=False),
)


class PlanError(ValueError):
    """The request cannot be planned as given; ``field`` names the option to change."""

    def __init__(self, message: str, field: str = "cluster") -> None:
        super().__init__(message)
        self.field = field


class NoFitError(PlanError):
    """No layout of the cluster holds the model; the message says why and what would fit."""

    def __init__(self, message: str, suggestions: Sequence[str] = (), field: str = "cluster") -> None:
        super().__init__(message, field)
        self.suggestions = list(suggestions)


@dataclass(frozen=True)
class ClusterNode:
    """One host as the planner sees it: ``gpu_memory_mib`` is the NVML total of its smallest GPU."""

    name: str
    gpus: int
    gpu_memory_mib: int
    gpu_name: str = "unknown"

    @property
    def is_cpu(self) -> bool:
        return self.gpu_name.strip().lower() == "cpu"

    @property
    def kind(self) -> Optional[GpuKind]:
        name = self.gpu_name.lower()
        # Whole words of the NVML name, allowing one variant letter (A10G, L40S): "a40" must not match "A4000".
        words = re.split(r"[^a-z0-9]+", name)
        for kind in GPU_KINDS:
            if " " in kind.fragment:
                matches = kind.fragment in name
            else:
                matches = any(re.fullmatch(re.escape(kind.fragment) + "[a-z]?", word) for word in words)
            if matches and self.gpu_memory_mib >= kind.min_total_mib:
                return kind
        return None

    @property
    def nvswitch(self) -> bool:
        """Whether the node's GPUs sit on an NVSwitch board (SXM), judged from the NVML name."""
        kind = self.kind
        words = re.split(r"[^a-z0-9]+", self.gpu_name.lower())
        return bool(kind and kind.nvswitch) and "pcie" not in words and "nvl" not in words

    @property
    def cuda_total_bytes(self) -> int:
        """The total torch.cuda.mem_get_info() reports, which vLLM multiplies by gpu_memory_utilization."""
        if self.is_cpu:
            return self.gpu_memory_mib * MIB
        kind = self.kind
        # Unknown GPUs: a fixed firmware reserve plus page tables that grow with the frame buffer.
        reserved = kind.reserved_mib if kind else 256 + self.gpu_memory_mib * 4 // 1000
        return (self.gpu_memory_mib - reserved) * MIB

    @property
    def label(self) -> str:
        return f"{self.gpus}x {self.gpu_name}"


@dataclass(frozen=True)
class PlanOptions:
    """The vLLM settings that shape the plan; None means "what vLLM picks" or "choose for me"."""

    max_model_len: Optional[int] = None
    gpu_memory_utilization: float = 0.9
    kv_cache_dtype: str = "auto"
    max_num_batched_tokens: Optional[int] = None
    max_num_seqs: Optional[int] = None
    tensor_parallel_size: Optional[int] = None
    pipeline_parallel_size: Optional[int] = None
    data_parallel_size: Optional[int] = None
    block_size: int = DEFAULT_BLOCK_SIZE
    # The vLLM release that will serve ("0.9.2", "v0.19.0"); None means the V1 engine up to 0.10.
    vllm_version: Optional[str] = None
    # Whether vLLM logs "Using FlashInfer for top-p & top-k sampling": up to 0.10 it did whenever FlashInfer was
    # installed (the Docker images). Only releases before 0.16 depend on it; None means "not installed".
    flashinfer_sampler: Optional[bool] = None


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


@dataclass
class Layout:
    """Sizes plus the node that hosts every rank of one engine replica."""

    tensor_parallel_size: int
    pipeline_parallel_size: int
    data_parallel_size: int
    # rank_nodes[replica][rank] is the node of that rank; ranks are laid out PP-major, TP-minor.
    rank_nodes: List[List[ClusterNode]]

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def strategy(self) -> str:
        if self.tensor_parallel_size > 1 and self.pipeline_parallel_size > 1:
            return "tensor_pipeline_parallel"
        if self.pipeline_parallel_size > 1:
            return "pipeline_parallel"
        if self.tensor_parallel_size > 1:
            return "tensor_parallel"
        return "single_gpu"

    def stage_nodes(self, replica: int, stage: int) -> List[ClusterNode]:
        tp = self.tensor_parallel_size
        return self.rank_nodes[replica][stage * tp : (stage + 1) * tp]

    def nodes_used(self) -> List[Tuple[ClusterNode, int]]:
        counts: Dict[str, int] = {}
        order: List[ClusterNode] = []
        for replica in self.rank_nodes:
            for node in replica:
                if node.name not in counts:
                    order.append(node)
                    counts[node.name] = 0
                counts[node.name] += 1
        return [(node, counts[node.name]) for node in order]


@dataclass
class Evaluation:
    layout: Layout
    stages: List[StageMemory]
    kv_cache_tokens: int
    fits: bool
    reason: str


@dataclass
class Plan:
    """The planner's answer, as returned by the parallel_plan module."""

    strategy: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    data_parallel_size: int
    world_size: int
    nodes: List[Dict[str, Any]]
    layer_partition: List[int]
    pipeline_stages: List[Dict[str, Any]]
    per_gpu: Dict[str, int]
    kv_cache_tokens: int
    max_concurrency: float
    max_model_len: int
    max_num_batched_tokens: int
    max_num_seqs: int
    gpu_memory_utilization: float
    kv_cache_dtype: str
    kv_bytes_per_token: int
    model: Dict[str, Any]
    vllm_args: List[str]
    env: Dict[str, str]
    # Independent vLLM servers, each with its own API server (see serving_groups).
    serving_groups: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    table: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------
# Inputs


def _positive(value: Any, where: str, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        else:
            raise PlanError(f"{where} must be a positive integer, got {value!r}.", field_name)
    if value <= 0:
        raise PlanError(f"{where} must be a positive integer, got {value}.", field_name)
    return value


def parse_cluster(raw: Any) -> List[ClusterNode]:
    """Validate ``cluster``: a non-empty list of ``{name, gpus, gpu_memory_mib, gpu_name}``."""
    if not isinstance(raw, (list, tuple)) or not raw:
        raise PlanError("cluster must be a non-empty list of nodes (name, gpus, gpu_memory_mib, gpu_name).", "cluster")
    nodes: List[ClusterNode] = []
    for index, entry in enumerate(raw):
        where = f"cluster[{index}]"
        if not isinstance(entry, Mapping):
            raise PlanError(f"{where} must be a dict with name, gpus and gpu_memory_mib.", "cluster")
        name = str(entry.get("name") or f"node{index}")
        where = f"cluster[{index}] ({name})"
        gpus = _positive(entry.get("gpus"), where + ".gpus", "cluster")
        memory = _positive(entry.get("gpu_memory_mib"), where + ".gpu_memory_mib (NVML total in MiB)", "cluster")
        nodes.append(ClusterNode(name, gpus, memory, str(entry.get("gpu_name") or "unknown")))
    names = [node.name for node in nodes]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PlanError("cluster names must be unique; repeated: {}.".format(", ".join(duplicates)), "cluster")
    return nodes


def parse_vllm_version(version: Optional[str]) -> Optional[Tuple[int, int]]:
    """(major, minor) of a vLLM version string such as "0.11.0", "v0.19.0" or "0.15.2rc1.dev93+g11a4c9d30"."""
    if version is None or str(version).strip() == "":
        return None
    match = re.match(r"^v?(\d+)\.(\d+)", str(version).strip())
    if not match:
        raise PlanError(
            f"vllm_version {version!r} is not a vLLM release such as 0.11.0; "
            "leave it unset for the V1 engine up to 0.10.",
            "vllm_version",
        )
    return int(match.group(1)), int(match.group(2))


def validate_options(spec: ModelSpec, options: PlanOptions) -> None:
    utilization = options.gpu_memory_utilization
    if isinstance(utilization, bool) or not isinstance(utilization, (int, float)) or not 0 < utilization <= 1:
        raise PlanError(
            f"gpu_memory_utilization must be in (0, 1], got {utilization!r}; vLLM's default is 0.9.",
            "gpu_memory_utilization",
        )
    if options.kv_cache_dtype not in KV_CACHE_DTYPE_BYTES:
        raise PlanError(
            "kv_cache_dtype {!r} is not one of {}.".format(options.kv_cache_dtype, ", ".join(KV_CACHE_DTYPE_BYTES)),
            "kv_cache_dtype",
        )
    parse_vllm_version(options.vllm_version)
    if options.kv_cache_dtype == "fp8_ds_mla" and spec.mla is None:
        raise PlanError("kv_cache_dtype fp8_ds_mla only applies to MLA models (DeepSeek V2/V3).", "kv_cache_dtype")
    for name in (
        "max_model_len",
        "max_num_batched_tokens",
        "max_num_seqs",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "data_parallel_size",
    ):
        value = getattr(options, name)
        if value is not None:
            _positive(value, name, name)
    if options.max_model_len is not None and options.max_model_len > spec.max_model_len:
        raise PlanError(
            f"max_model_len {options.max_model_len} is above {spec.name}'s maximum of {spec.max_model_len} "
            "(from its config.json); vLLM refuses it. "
            f"Use max_model_len <= {spec.max_model_len}.",
            "max_model_len",
        )


# ---------------------------------------------------------------------------------------------------------
# What vLLM accepts


def pp_layer_partition(num_layers: int, pipeline_parallel_size: int) -> List[int]:
    """Layers per pipeline stage as vLLM's ``get_pp_indices`` places them.

    Every stage gets ``num_layers // pp``; the remainder goes one layer each to the stages just before
    the last one (the last stage also runs the output head and the sampler).
    """
    if pipeline_parallel_size > num_layers:
        raise PlanError(
            f"pipeline_parallel_size {pipeline_parallel_size} is larger than the model's {num_layers} layers.",
            "pipeline_parallel_size",
        )
    partition = [num_layers // pipeline_parallel_size] * pipeline_parallel_size
    for offset in range(2, num_layers % pipeline_parallel_size + 2):
        partition[-offset] += 1
    return partition


def get_pp_indices(num_layers: int, pp_rank: int, pp_size: int) -> Tuple[int, int]:
    """First and one-past-last layer of pipeline rank ``pp_rank``, as in vllm/distributed/utils.py."""
    partition = pp_layer_partition(num_layers, pp_size)
    start = sum(partition[:pp_rank])
    return start, start + partition[pp_rank]


def padded_vocab_size(vocab_size: int) -> int:
    return -(-vocab_size // VOCAB_PADDING) * VOCAB_PADDING


def tensor_parallel_problem(spec: ModelSpec, tensor_parallel_size: int) -> Optional[str]:
    """Why vLLM would refuse this tensor-parallel size for the model, or None when it accepts it."""
    tp = tensor_parallel_size
    heads = spec.num_attention_heads
    if heads % tp:
        return f"num_attention_heads ({heads}) must be divisible by tensor_parallel_size ({tp})"
    if spec.mla is None:
        kv_heads = spec.num_kv_heads
        if tp >= kv_heads and tp % kv_heads:
            return f"tensor_parallel_size ({tp}) must be a multiple of num_key_value_heads ({kv_heads})"
        if tp < kv_heads and kv_heads % tp:
            return f"num_key_value_heads ({kv_heads}) must be divisible by tensor_parallel_size ({tp})"
    if padded_vocab_size(spec.vocab_size) % tp:
        return (
            f"the vocabulary padded to a multiple of {VOCAB_PADDING} ({padded_vocab_size(spec.vocab_size)}) "
            f"must be divisible by tensor_parallel_size ({tp})"
        )
    quant = spec.quantization
    if quant is not None and tp > 1:
        # Row-parallel layers split their input rows: o_proj, down_proj and the experts' down projections.
        inputs = [("o_proj", heads * (spec.mla.v_head_dim if spec.mla else spec.head_dim))]
        inputs.append(("down_proj", spec.intermediate_size))
        if spec.moe is not None:
            inputs.append(("experts' down_proj", spec.moe.expert_intermediate_size))
        if quant.is_grouped_int:
            for layer, width in inputs:
                if width % tp or (width // tp) % int(quant.group_size or 1):
                    return (
                        f"{quant.method.upper()} group_size {quant.group_size} does not divide {layer}'s input per "
                        f"TP rank ({width} / {tp} = {width / tp}); vLLM fails with "
                        "'The input size is not aligned with the quantized weight shape'"
                    )
            if quant.method.startswith("awq") and (spec.intermediate_size // tp) % INT4_PACK_FACTOR:
                return (
                    f"AWQ packs {INT4_PACK_FACTOR} values per int32, which gate_up_proj's output per TP rank "
                    f"({spec.intermediate_size // tp}) does not fill"
                )
        if quant.weight_block_size is not None:
            block_n, block_k = quant.weight_block_size
            for layer, width in inputs:
                if width % tp or (width // tp) % block_k:
                    return (
                        f"block-quantized {layer} input per TP rank ({width} / {tp}) is not a multiple of the "
                        f"{block_k}-wide block"
                    )
            if (spec.intermediate_size // tp) % block_n:
                return (
                    f"block-quantized gate_up_proj output per TP rank ({spec.intermediate_size // tp}) "
                    f"is not a multiple of {block_n}"
                )
    return None


def valid_tensor_parallel_sizes(spec: ModelSpec, largest: int) -> List[int]:
    return [tp for tp in range(1, largest + 1) if tensor_parallel_problem(spec, tp) is None]


# ---------------------------------------------------------------------------------------------------------
# Memory


def gpu_batch_defaults(node: ClusterNode, world_size: int) -> Tuple[int, int]:
    """vLLM's ``get_batch_defaults`` for the OpenAI server: (max_num_batched_tokens, max_num_seqs)."""
    if node.is_cpu:
        return 2048 * world_size, 128 * world_size
    # Large-memory GPUs other than the A100 (H100, H200, MI300) get the larger batch (vLLM PR #17885).
    large = node.cuda_total_bytes >= 70 * GIB and "a100" not in node.gpu_name.lower()
    return (8192, 1024) if large else (2048, 256)


def resolve_batch(options: PlanOptions, rank0: ClusterNode, world_size: int, max_model_len: int) -> Tuple[int, int]:
    """The max_num_batched_tokens and max_num_seqs vLLM ends up with (arg_utils defaults, then the caps)."""
    default_tokens, default_seqs = gpu_batch_defaults(rank0, world_size)
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


def evaluate(
    spec: ModelSpec, layout: Layout, options: PlanOptions, max_model_len: int, batch: Tuple[int, int]
) -> Evaluation:
    """Per-stage memory of every replica; the engine's KV cache is its tightest worker's."""
    tp, pp = layout.tensor_parallel_size, layout.pipeline_parallel_size
    tokens, seqs = batch
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
            weights = stage_weight_bytes(spec, first, last, tp, pp, stage)
            if tightest.is_cpu:
                # vLLM on CPU keeps weights in host memory and gives the KV cache the space it is told to.
                budget = tightest.cuda_total_bytes
                activation = non_torch = graphs = 0
                available = budget
            else:
                budget = int(options.gpu_memory_utilization * tightest.cuda_total_bytes)
                activation = forward_activation_bytes(spec, tokens, tp)
                if stage == pp - 1:
                    hidden_kept = tokens * spec.hidden_size * spec.dtype_bytes
                    sampler = sampler_activation_bytes(spec, seqs, options.vllm_version, options.flashinfer_sampler)
                    activation = max(activation, hidden_kept + sampler)
                # NVLS buffers only appear when every GPU of the TP group sits on an NVSwitch board.
                nvswitch = all(node.nvswitch for node in nodes) and len({node.name for node in nodes}) == 1
                non_torch = non_torch_bytes(tp, pp, nvswitch, options.vllm_version)
                graphs = CUDA_GRAPH_BASE_BYTES + CUDA_GRAPH_BYTES_PER_LAYER * num_layers
                available = budget - weights - activation - non_torch
            blocks = max(available, 0) // (kv_bytes_per_token * options.block_size)
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
                    kv_cache_tokens=blocks * options.block_size,
                    cuda_graph_bytes=graphs,
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
            f"stage {short.stage} needs {_gib(short.weights_bytes)} per GPU for weights, "
            f"{_gib(short.activation_bytes)} for the profile run's activations and "
            f"{_gib(short.non_torch_bytes)} outside torch, more than its budget of {_gib(short.budget_bytes)} "
            f"({options.gpu_memory_utilization} x {_gib(short.cuda_total_bytes)} CUDA memory of {short.gpu_name})"
        )
        return Evaluation(layout, worst, 0, False, reason)
    if worst_tokens < max_model_len:
        reason = (
            f"the KV cache holds {worst_tokens:,} tokens, fewer than one request of max_model_len {max_model_len:,}"
        )
        return Evaluation(layout, worst, worst_tokens, False, reason)
    return Evaluation(layout, worst, worst_tokens, True, "")


# ---------------------------------------------------------------------------------------------------------
# Layouts


def place(nodes: Sequence[ClusterNode], tp: int, pp: int, dp: int, field: str = "tensor_parallel_size") -> Layout:
    """Give ranks to GPUs node by node, in the cluster's order (the first node hosts rank 0)."""
    slots = [node for node in nodes for _slot in range(node.gpus)]
    needed = tp * pp * dp
    if needed > len(slots):
        raise PlanError(
            f"tensor_parallel_size {tp} x pipeline_parallel_size {pp} x data_parallel_size {dp} needs {needed} GPUs; "
            f"the cluster has {len(slots)}: lower {field} or add nodes to cluster.",
            field,
        )
    world = tp * pp
    rank_nodes = [slots[replica * world : (replica + 1) * world] for replica in range(dp)]
    return Layout(tp, pp, dp, rank_nodes)


def _largest_first(nodes: Sequence[ClusterNode]) -> List[ClusterNode]:
    return sorted(nodes, key=lambda node: node.gpus * node.cuda_total_bytes, reverse=True)


def candidate_layouts(spec: ModelSpec, nodes: Sequence[ClusterNode]) -> List[Layout]:
    """Layouts in the guide's order of preference; the first that fits is the plan."""
    layouts: List[Layout] = []
    best_gpu = max(nodes, key=lambda node: node.cuda_total_bytes)
    layouts.append(Layout(1, 1, 1, [[best_gpu]]))
    for node in _largest_first(nodes):
        if node.gpus < 2:
            continue
        if tensor_parallel_problem(spec, node.gpus) is None:
            layouts.append(Layout(node.gpus, 1, 1, [[node] * node.gpus]))
        elif node.gpus <= spec.num_layers:
            # The guide's edge case: the GPU count does not divide the heads, so split layers instead.
            layouts.append(Layout(1, node.gpus, 1, [[node] * node.gpus]))
    if len(nodes) > 1:
        # Across nodes the guide uses every node: TP = GPUs per node, PP = number of nodes, in the cluster's
        # order so that its first node (the head) hosts rank 0. When the GPUs per node do not suit the heads,
        # TP drops to the largest size that does and PP takes up the rest.
        ordered = list(nodes)
        gpus_per_node = min(node.gpus for node in ordered)
        tp = gpus_per_node
        while tp > 1 and (tensor_parallel_problem(spec, tp) is not None or gpus_per_node % tp):
            tp -= 1
        pp = len(ordered) * (gpus_per_node // tp)
        if pp <= spec.num_layers:
            ranks = [node for node in ordered for _slot in range(gpus_per_node)]
            layouts.append(Layout(tp, pp, 1, [ranks]))
    return layouts


def _explicit_layout(spec: ModelSpec, nodes: Sequence[ClusterNode], options: PlanOptions) -> List[Layout]:
    """Layouts to try when the user fixed some sizes: validated, never second-guessed."""
    dp = options.data_parallel_size or 1
    total = sum(node.gpus for node in nodes)
    tp = options.tensor_parallel_size
    if tp is None:
        # The guide's choice within the first node, shrunk until vLLM accepts it and every replica has room.
        tp = max(1, min(nodes[0].gpus, total // (dp * (options.pipeline_parallel_size or 1))))
        while tp > 1 and tensor_parallel_problem(spec, tp) is not None:
            tp -= 1
    problem = tensor_parallel_problem(spec, tp)
    if problem:
        valid = valid_tensor_parallel_sizes(spec, max(total, 1))
        raise PlanError(
            "tensor_parallel_size {} is not accepted by vLLM for {}: {}. Valid sizes on this cluster: {}.".format(
                tp, spec.name, problem, ", ".join(str(size) for size in valid)
            ),
            "tensor_parallel_size",
        )
    if options.pipeline_parallel_size is not None:
        pp_choices = [options.pipeline_parallel_size]
    else:
        pp_choices = list(range(1, max(1, total // (tp * dp)) + 1)) or [1]
    if options.tensor_parallel_size is not None:
        field = "tensor_parallel_size"
    elif options.pipeline_parallel_size is not None:
        field = "pipeline_parallel_size"
    else:
        field = "data_parallel_size"
    layouts = []
    for pp in pp_choices:
        pp_layer_partition(spec.num_layers, pp)
        layouts.append(place(nodes, tp, pp, dp, field))
    return layouts


# ---------------------------------------------------------------------------------------------------------
# Planning


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def _cluster_summary(nodes: Sequence[ClusterNode]) -> str:
    groups: Dict[str, int] = {}
    for node in nodes:
        key = f"{node.gpus} x {node.gpu_name} ({node.gpu_memory_mib} MiB)"
        groups[key] = groups.get(key, 0) + 1
    return ", ".join("{} node{} of {}".format(count, "s" if count > 1 else "", key) for key, count in groups.items())


def _first_fit(
    spec: ModelSpec, layouts: Sequence[Layout], options: PlanOptions, max_model_len: int
) -> Tuple[Optional[Evaluation], List[Evaluation]]:
    tried = []
    for layout in layouts:
        rank0 = layout.rank_nodes[0][0]
        batch = resolve_batch(options, rank0, layout.world_size, max_model_len)
        evaluation = evaluate(spec, layout, options, max_model_len, batch)
        tried.append(evaluation)
        if evaluation.fits:
            return evaluation, tried
    return None, tried


def _suggestions(
    spec: ModelSpec,
    nodes: Sequence[ClusterNode],
    options: PlanOptions,
    max_model_len: int,
    tried: List[Evaluation],
    explicit: bool,
) -> List[str]:
    """What would fit: more nodes like the largest one, a shorter max_model_len, or an fp8 KV cache."""
    suggestions = []
    template = _largest_first(nodes)[0]
    if not explicit:
        for extra in range(1, 65):
            grown = list(nodes) + [
                ClusterNode(f"{template.name}-more-{index}", template.gpus, template.gpu_memory_mib, template.gpu_name)
                for index in range(extra)
            ]
            found = _first_fit(spec, candidate_layouts(spec, grown), options, max_model_len)[0]
            if found is not None:
                layout = found.layout
                suggestions.append(
                    "{} more node{} of {} ({} more GPUs, {} nodes in all) would fit it with tensor_parallel_size {} "
                    "and pipeline_parallel_size {} ({:,} KV tokens).".format(
                        extra,
                        "s" if extra > 1 else "",
                        template.label,
                        extra * template.gpus,
                        len(nodes) + extra,
                        layout.tensor_parallel_size,
                        layout.pipeline_parallel_size,
                        found.kv_cache_tokens,
                    )
                )
                break
    best = max(tried, key=lambda evaluation: evaluation.kv_cache_tokens, default=None)
    if best is not None and best.kv_cache_tokens >= options.block_size:
        layout = best.layout
        suggestions.append(
            f"max_model_len {best.kv_cache_tokens:,} (or lower) fits on this cluster with "
            f"tensor_parallel_size {layout.tensor_parallel_size} and "
            f"pipeline_parallel_size {layout.pipeline_parallel_size}."
        )
    if KV_CACHE_DTYPE_BYTES[options.kv_cache_dtype] in (0, 2) and spec.dtype_bytes >= 2:
        fp8 = PlanOptions(**dict(asdict(options), kv_cache_dtype="fp8"))
        found = _first_fit(spec, [evaluation.layout for evaluation in tried], fp8, max_model_len)[0]
        if found is not None:
            suggestions.append(f"kv_cache_dtype fp8 halves the KV cache and fits ({found.kv_cache_tokens:,} tokens).")
    return suggestions


def plan(spec: ModelSpec, cluster: Sequence[ClusterNode], options: PlanOptions) -> Plan:
    """Choose (or validate) the parallel sizes for ``spec`` on ``cluster`` and size every worker's memory."""
    nodes = list(cluster)
    if not nodes:
        raise PlanError("cluster is empty.", "cluster")
    validate_options(spec, options)
    max_model_len = options.max_model_len or spec.max_model_len
    explicit = any(
        value is not None
        for value in (options.tensor_parallel_size, options.pipeline_parallel_size, options.data_parallel_size)
    )
    layouts = _explicit_layout(spec, nodes, options) if explicit else candidate_layouts(spec, nodes)
    chosen, tried = _first_fit(spec, layouts, options, max_model_len)
    if chosen is None:
        worst = tried[-1] if tried else None
        reason = worst.reason if worst else "no layout could be built"
        if explicit and worst is not None:
            where = (
                f"with tensor_parallel_size {worst.layout.tensor_parallel_size} and "
                f"pipeline_parallel_size {worst.layout.pipeline_parallel_size}"
            )
        else:
            sizes = (worst.layout.tensor_parallel_size, worst.layout.pipeline_parallel_size) if worst else (0, 0)
            where = "in any layout (largest tried: tensor_parallel_size {} x pipeline_parallel_size {})".format(*sizes)
        suggestions = _suggestions(spec, nodes, options, max_model_len, tried, explicit)
        message = "{} ({:.1f} GiB of {} weights, {}) does not fit on {} {}: {}.".format(
            spec.name,
            spec.loaded_weights_bytes / GIB,
            f"quantized ({spec.quantization.method})" if spec.quantization else spec.dtype,
            f"max_model_len {max_model_len:,}",
            _cluster_summary(nodes),
            where,
            reason,
        )
        if suggestions:
            message += " Would fit: " + " ".join(suggestions)
        unsupported = sorted({node.gpu_name for node in nodes if node.kind and not node.kind.vllm_supported})
        if unsupported:
            message += (
                " Note: {} is below vLLM's minimum compute capability 7.0 and has no bfloat16; a GGUF "
                "quantization served by the llama_cpp backend is the way to use it.".format(", ".join(unsupported))
            )
        # When the weights fit and only one max_model_len request does not, max_model_len is the option to change.
        field = "max_model_len" if any(evaluation.kv_cache_tokens > 0 for evaluation in tried) else "cluster"
        raise NoFitError(message, suggestions, field)
    result = _build_plan(spec, chosen, options, max_model_len)
    result.table = render_plan(result.to_dict())
    return result


def _tensor_parallel_span(layout: Layout) -> List[str]:
    """Names of the nodes one tensor-parallel group spans, when any group crosses a node boundary."""
    tp = layout.tensor_parallel_size
    for replica in layout.rank_nodes:
        for stage in range(layout.pipeline_parallel_size):
            names = sorted({node.name for node in replica[stage * tp : (stage + 1) * tp]})
            if len(names) > 1:
                return names
    return []


def _warnings(spec: ModelSpec, evaluation: Evaluation, options: PlanOptions) -> List[str]:
    """Things that work but deserve the operator's attention."""
    layout = evaluation.layout
    tp = layout.tensor_parallel_size
    warnings = []
    spanned = _tensor_parallel_span(layout)
    if spanned:
        warnings.append(
            f"tensor_parallel_size {tp} spans nodes {', '.join(spanned)}: every layer all-reduces over the network, "
            "which is slow without InfiniBand/RoCE; prefer tensor parallel within a node and pipeline parallel "
            "across nodes."
        )
    partition = pp_layer_partition(spec.num_layers, layout.pipeline_parallel_size)
    if len(set(partition)) > 1:
        warnings.append(
            f"{spec.num_layers} layers do not split evenly over {layout.pipeline_parallel_size} pipeline stages: "
            f"{partition} (VLLM_PP_LAYER_PARTITION is set to match vLLM's placement)."
        )
    if spec.mla is not None and tp > 1:
        warnings.append(
            f"MLA keeps one latent KV head of {spec.mla.latent_size} values per token, so each of the {tp} TP ranks "
            "stores the whole KV cache of its layers; more TP does not add KV capacity."
        )
    elif spec.mla is None and tp > spec.num_kv_heads:
        warnings.append(
            f"tensor_parallel_size {tp} exceeds the {spec.num_kv_heads} KV heads: vLLM replicates each KV head "
            f"on {tp // spec.num_kv_heads} GPUs."
        )
    used = [node for node, _count in layout.nodes_used()]
    if len({node.gpu_memory_mib for node in used}) > 1:
        warnings.append("The nodes' GPUs differ in memory; every worker is limited by the smallest one.")
    for node in {node.gpu_name: node for node in used}.values():
        kind = node.kind
        if kind is not None and not kind.vllm_supported:
            warnings.append(
                f"{node.gpu_name} (compute capability below 7.0) is not supported by vLLM; use the llama_cpp "
                "backend with a GGUF quantization instead."
            )
        elif kind is not None and not kind.bfloat16 and spec.dtype == "bfloat16":
            warnings.append(f"{node.gpu_name} has no bfloat16: vLLM runs this model with --dtype float16.")
    for stage in evaluation.stages:
        outside_budget = stage.cuda_total_bytes - stage.budget_bytes
        needed = stage.cuda_graph_bytes + CUDA_CONTEXT_BYTES
        if stage.gpu_name.lower() != "cpu" and needed > outside_budget:
            warnings.append(
                f"gpu_memory_utilization {options.gpu_memory_utilization} leaves {_gib(outside_budget)} outside "
                f"the budget on {stage.gpu_name}, less than the CUDA context and graphs need (about {_gib(needed)}); "
                "lower it or expect an OOM during CUDA graph capture."
            )
            break
    return warnings


def _sampler_version_note(
    spec: ModelSpec, evaluation: Evaluation, options: PlanOptions, tokens: int, seqs: int
) -> Optional[str]:
    """Say so when the unstated vLLM release decides more than a tenth of the KV cache (the profiled sampler)."""
    if options.vllm_version or options.flashinfer_sampler is not None:
        return None
    last = evaluation.stages[-1]
    if last.gpu_name.lower() == "cpu" or last.kv_bytes_per_token <= 0:
        return None
    tp = evaluation.layout.tensor_parallel_size
    hidden_kept = tokens * spec.hidden_size * spec.dtype_bytes
    kernel = seqs * padded_vocab_size(spec.vocab_size) * KERNEL_SAMPLER_BYTES_PER_LOGIT
    freed = last.activation_bytes - max(forward_activation_bytes(spec, tokens, tp), hidden_kept + kernel)
    tightest = min(evaluation.stages, key=lambda stage: stage.kv_cache_tokens)
    if freed <= 0.1 * max(tightest.kv_cache_bytes, 1):
        return None
    return (
        f"The KV estimate assumes vLLM up to 0.15, whose profile sorts {seqs} rows of logits for top-k/top-p "
        f"({_gib(last.activation_bytes)}); vLLM 0.16 and later (and 0.10 with FlashInfer installed) profile about "
        f"{_gib(freed)} less, about {int(freed // last.kv_bytes_per_token):,} more KV tokens: set vllm_version to "
        "plan for the release you run."
    )


def serving_groups(spec: ModelSpec, layout: Layout) -> List[Dict[str, Any]]:
    """Split the replicas into independent vLLM servers, so that one can restart while the others serve.

    Replicas that share a node form one group: one ``vllm serve --data-parallel-size k`` on that node (vLLM's
    single-node data parallel). A replica that spans nodes is a group of its own (a native ``--nnodes`` group)
    and must have its nodes to itself, since each node runs one vLLM server. Every group serves the API on its
    first node; the group's own flags are in ``vllm_args``, added to the plan's.
    """
    replica_nodes = [list(dict.fromkeys(node.name for node in replica)) for replica in layout.rank_nodes]
    holders: Dict[str, List[int]] = {}
    for replica, names in enumerate(replica_nodes):
        for name in names:
            holders.setdefault(name, []).append(replica)
    groups: List[Dict[str, Any]] = []
    node_groups: Dict[str, Dict[str, Any]] = {}
    for replica, names in enumerate(replica_nodes):
        if len(names) > 1:
            shared = [name for name in names if len(holders[name]) > 1]
            if shared:
                raise PlanError(_shared_node_message(layout, replica, names, shared[0], holders), "data_parallel_size")
            groups.append({"nodes": names, "replicas": [replica]})
        elif names[0] in node_groups:
            node_groups[names[0]]["replicas"].append(replica)
        else:
            node_groups[names[0]] = {"nodes": names, "replicas": [replica]}
            groups.append(node_groups[names[0]])
    if len(groups) > 1 and spec.moe is not None:
        on_first_node = len(groups[0]["replicas"]) if len(groups[0]["nodes"]) == 1 else 1
        raise PlanError(
            f"data_parallel_size {layout.data_parallel_size} places replicas of {spec.name}, a mixture-of-experts "
            f"model, on {len(groups)} separate vLLM servers ({', '.join(group['nodes'][0] for group in groups)}). "
            "vLLM's data parallel ties the expert layers of all its replicas into one group (DP x TP) that runs "
            "every forward pass together, so those replicas cannot be independent servers restarted one at a time. "
            f"Use data_parallel_size {on_first_node} or less, so that all replicas run in one server on "
            f"{groups[0]['nodes'][0]}.",
            "data_parallel_size",
        )
    for group in groups:
        replicas = len(group["replicas"])
        group["data_parallel_size"] = replicas
        group["endpoint_node"] = group["nodes"][0]
        group["vllm_args"] = ["--data-parallel-size", str(replicas)] if replicas > 1 else []
    return groups


def _shared_node_message(
    layout: Layout, replica: int, names: List[str], shared: str, holders: Mapping[str, List[int]]
) -> str:
    other = next(index for index in holders[shared] if index != replica)
    per_node = sorted({node.gpus for node, _count in layout.nodes_used()})
    gpus = " or ".join(str(count) for count in per_node)
    return (
        f"data_parallel_size {layout.data_parallel_size} with tensor_parallel_size {layout.tensor_parallel_size} x "
        f"pipeline_parallel_size {layout.pipeline_parallel_size} puts replica {replica} on {', '.join(names)}, and "
        f"{shared} also holds replica {other}. A replica that spans nodes must have its nodes to itself, because each "
        f"node runs one vLLM server. With {gpus} GPUs per node, use tensor_parallel_size x pipeline_parallel_size "
        f"that divides {gpus} or is a multiple of it, or data_parallel_size 1."
    )


def _build_plan(spec: ModelSpec, evaluation: Evaluation, options: PlanOptions, max_model_len: int) -> Plan:
    layout = evaluation.layout
    tp, pp, dp = layout.tensor_parallel_size, layout.pipeline_parallel_size, layout.data_parallel_size
    rank0 = layout.rank_nodes[0][0]
    tokens, seqs = resolve_batch(options, rank0, layout.world_size, max_model_len)
    partition = pp_layer_partition(spec.num_layers, pp)
    stages = evaluation.stages
    tightest = min(stages, key=lambda stage: stage.kv_cache_tokens)
    heaviest = max(stages, key=lambda stage: stage.weights_bytes + stage.activation_bytes)

    nodes = []
    rank = 0
    for node, count in layout.nodes_used():
        node_stages = sorted({stage.stage for stage in stages if node.name in stage.nodes})
        nodes.append(
            {
                "name": node.name,
                "gpu_name": node.gpu_name,
                "gpus": node.gpus,
                "gpus_used": count,
                "gpu_memory_mib": node.gpu_memory_mib,
                "first_rank": rank,
                "pipeline_stages": node_stages,
            }
        )
        rank += count

    args = [
        "--tensor-parallel-size",
        str(tp),
        "--pipeline-parallel-size",
        str(pp),
        "--max-model-len",
        str(max_model_len),
        "--gpu-memory-utilization",
        str(options.gpu_memory_utilization),
    ]
    if options.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", options.kv_cache_dtype]
    if options.max_num_batched_tokens is not None:
        args += ["--max-num-batched-tokens", str(options.max_num_batched_tokens)]
    if options.max_num_seqs is not None:
        args += ["--max-num-seqs", str(options.max_num_seqs)]
    if spec.dtype == "bfloat16" and any(
        node.kind is not None and not node.kind.bfloat16 for node, _count in layout.nodes_used()
    ):
        args += ["--dtype", "float16"]

    env: Dict[str, str] = {}
    if len(set(partition)) > 1:
        env["VLLM_PP_LAYER_PARTITION"] = ",".join(str(layers) for layers in partition)
    if rank0.is_cpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, tightest.kv_cache_bytes // GIB))

    model = {
        "name": spec.name,
        "architecture": spec.architecture,
        "dtype": spec.dtype,
        "quantization": spec.quantization.method if spec.quantization else None,
        "weights_bytes": spec.weights_bytes,
        "loaded_weights_bytes": spec.loaded_weights_bytes,
        "weights_source": spec.weights_source,
        "num_layers": spec.num_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_kv_heads": 1 if spec.mla else spec.num_kv_heads,
        "head_dim": spec.mla.latent_size if spec.mla else spec.head_dim,
        "attention": "mla" if spec.mla else "gqa" if spec.num_kv_heads < spec.num_attention_heads else "mha",
        "vocab_size": spec.vocab_size,
        "max_model_len": spec.max_model_len,
    }
    result = Plan(
        strategy=layout.strategy,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        data_parallel_size=dp,
        world_size=layout.world_size,
        nodes=nodes,
        layer_partition=partition,
        pipeline_stages=[asdict(stage) for stage in stages],
        per_gpu={
            "weights_bytes": heaviest.weights_bytes,
            "activation_bytes": heaviest.activation_bytes,
            "non_torch_bytes": heaviest.non_torch_bytes,
            "kv_cache_bytes": tightest.kv_cache_bytes,
            "budget_bytes": tightest.budget_bytes,
            "cuda_total_bytes": tightest.cuda_total_bytes,
            "cuda_graph_bytes": heaviest.cuda_graph_bytes,
        },
        kv_cache_tokens=evaluation.kv_cache_tokens,
        max_concurrency=round(dp * evaluation.kv_cache_tokens / max_model_len, 2),
        max_model_len=max_model_len,
        max_num_batched_tokens=tokens,
        max_num_seqs=seqs,
        gpu_memory_utilization=options.gpu_memory_utilization,
        kv_cache_dtype=options.kv_cache_dtype,
        kv_bytes_per_token=tightest.kv_bytes_per_token,
        model=model,
        vllm_args=args,
        env=env,
        serving_groups=serving_groups(spec, layout),
        warnings=_warnings(spec, evaluation, options),
    )
    note = _sampler_version_note(spec, evaluation, options, tokens, seqs)
    if note:
        result.warnings.append(note)
    return result


# ---------------------------------------------------------------------------------------------------------
# Entry points for the parallel_plan module and its action plugin


def cluster_from_gpu_facts(
    facts_by_host: Mapping[str, Optional[Mapping[str, Any]]],
    devices_by_host: Optional[Mapping[str, Optional[Mapping[str, Any]]]] = None,
) -> List[Dict[str, Any]]:
    """Build ``cluster`` from each host's ``llmserve_gpu`` fact (gpu_facts), in the play's host order.

    A node offers its GPU count, the NVML total of its smallest GPU and the first GPU's name. A host with a
    device description (``llmserve_node_devices``: a vLLM CPU worker, or hardware described by hand) uses it
    instead. Hosts without either are an error: planning around them silently would place ranks on hosts
    that cannot serve.
    """
    cluster: List[Dict[str, Any]] = []
    problems = []
    for host, facts in facts_by_host.items():
        described = (devices_by_host or {}).get(host)
        if described:
            cluster.append({"name": host, **dict(described)})
            continue
        if not facts:
            problems.append(f"{host} has no llmserve_gpu facts (run llmserve.cluster.gpu_facts on it first)")
            continue
        gpus = [gpu for gpu in facts.get("gpus") or [] if gpu.get("memory_total_mib")]
        if not facts.get("available") or not gpus:
            problems.append("{} has no usable GPU ({})".format(host, facts.get("reason") or "NVML lists none"))
            continue
        cluster.append(
            {
                "name": host,
                "gpus": len(gpus),
                "gpu_memory_mib": min(int(gpu["memory_total_mib"]) for gpu in gpus),
                "gpu_name": str(gpus[0].get("name") or "unknown"),
            }
        )
    if problems:
        raise PlanError(
            "Cannot build the cluster from the play's hosts: {}. Limit the play to GPU hosts or pass cluster "
            "explicitly.".format("; ".join(problems)),
            "cluster",
        )
    if not cluster:
        raise PlanError("The play has no hosts to plan for; pass cluster explicitly.", "cluster")
    return cluster


def options_from_params(params: Mapping[str, Any]) -> PlanOptions:
    """PlanOptions from the module's parameters (None where the user left vLLM's default)."""
    utilization = params.get("gpu_memory_utilization")
    return PlanOptions(
        max_model_len=params.get("max_model_len"),
        gpu_memory_utilization=0.9 if utilization is None else utilization,
        kv_cache_dtype=params.get("kv_cache_dtype") or "auto",
        max_num_batched_tokens=params.get("max_num_batched_tokens"),
        max_num_seqs=params.get("max_num_seqs"),
        tensor_parallel_size=params.get("tensor_parallel_size"),
        pipeline_parallel_size=params.get("pipeline_parallel_size"),
        data_parallel_size=params.get("data_parallel_size"),
        vllm_version=params.get("vllm_version"),
        flashinfer_sampler=params.get("flashinfer_sampler"),
    )


def load_spec_from_params(
    params: Mapping[str, Any],
    fetch_file: Optional[FetchFile] = None,
    fetch_parameter_count: Optional[FetchParameterCount] = None,
) -> ModelSpec:
    """Read the model from ``model_dir`` (a controller path) or from the Hub (``model`` plus ``revision``)."""
    if params.get("model_dir"):
        return load_model_spec_from_dir(params["model_dir"])
    if params.get("model"):
        return load_model_spec_from_hub(
            params["model"],
            params.get("revision"),
            fetch_file=fetch_file,
            fetch_parameter_count=fetch_parameter_count,
        )
    raise PlanError("One of model_dir or model is required.", "model_dir")


def plan_from_params(
    params: Mapping[str, Any],
    fetch_file: Optional[FetchFile] = None,
    fetch_parameter_count: Optional[FetchParameterCount] = None,
) -> Plan:
    """What the module does: read the model, validate the cluster and options, and plan."""
    spec = load_spec_from_params(params, fetch_file, fetch_parameter_count)
    cluster = head_first(
        without_nodes(parse_cluster(params.get("cluster")), params.get("exclude_nodes") or [], params.get("head")),
        params.get("head"),
    )
    return plan(spec, cluster, options_from_params(params))


def without_nodes(cluster: List[ClusterNode], excluded: Sequence[str], head: Optional[str]) -> List[ClusterNode]:
    """The cluster less the nodes being decommissioned; the head must stay."""
    if head and head in excluded:
        raise PlanError(
            f"exclude_nodes: {head} is the head (rank 0) and cannot leave; make another host the head "
            "(the ray_head group) first.",
            "exclude_nodes",
        )
    remaining = [node for node in cluster if node.name not in excluded]
    if not remaining:
        raise PlanError("exclude_nodes leaves no node to plan for.", "exclude_nodes")
    return remaining


def head_first(cluster: List[ClusterNode], head: Optional[str]) -> List[ClusterNode]:
    """Move the head node (rank 0) to the front; the others keep their order."""
    if not head:
        return cluster
    names = [node.name for node in cluster]
    if head not in names:
        raise PlanError(
            "head {} is not a node of cluster ({}).".format(head, ", ".join(names)),
            "head",
        )
    return [cluster[names.index(head)]] + [node for node in cluster if node.name != head]
