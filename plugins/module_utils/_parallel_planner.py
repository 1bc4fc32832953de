# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Decide how vLLM splits a model over GPUs and nodes, and how much KV cache each worker ends up with.

Strategy (vLLM's distributed-serving guide): one GPU when the model fits one; otherwise tensor parallel
over the GPUs of one node; otherwise tensor parallel within nodes and pipeline parallel across them; and
when a node's GPU count does not divide the attention heads, pipeline parallel over its GPUs instead.

The parts live beside this module: the cluster and options in _plan_inputs, vLLM's rules and the layouts in
_vllm_layouts, each worker's memory and KV cache in _vllm_memory, and the command line in _vllm_command. This
module chooses among the layouts and builds the plan the parallel_plan module returns.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.llmserve.cluster.plugins.module_utils._expert_parallel import expert_parallel_problem
from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import (
    GIB,
    FetchFile,
    FetchParameterCount,
    ModelSpec,
    load_model_spec_from_dir,
    load_model_spec_from_hub,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import (
    DEFAULT_BLOCK_SIZE,
    ClusterNode,
    PlanError,
    PlanOptions,
    parse_cluster,
    parse_vllm_version,
    positive_int,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_resolution import resolve_run
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_table import gib, render_plan
from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_command import vllm_args, vllm_env
from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_layouts import (
    Layout,
    candidate_layouts,
    explicit_layouts,
    largest_first,
    padded_vocab_size,
    pp_layer_partition,
    serving_groups,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_memory import (
    CUDA_CONTEXT_BYTES,
    KERNEL_SAMPLER_BYTES_PER_LOGIT,
    KV_CACHE_DTYPE_BYTES,
    Evaluation,
    evaluate,
    forward_activation_bytes,
    resolve_batch,
)


class NoFitError(PlanError):
    """No layout of the cluster holds the model; the message says why and what would fit."""

    def __init__(self, message: str, suggestions: Sequence[str] = (), field: str = "cluster") -> None:
        super().__init__(message, field)
        self.suggestions = list(suggestions)


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
    # How much KV cache is left over one max_model_len request, against the planner's error bound (kv_margin).
    margin: Dict[str, Any] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    table: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


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
    if options.enable_expert_parallel:
        problem = expert_parallel_problem(spec, options.tensor_parallel_size or 1, options.data_parallel_size or 1)
        if problem:
            raise PlanError(f"enable_expert_parallel: {problem}.", "enable_expert_parallel")
    if options.cpu_offload_gb < 0:
        raise PlanError(f"cpu_offload_gb must be 0 or more, got {options.cpu_offload_gb}.", "cpu_offload_gb")
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
            positive_int(value, name, name)
    if options.max_model_len is not None and options.max_model_len > spec.max_model_len:
        raise PlanError(
            f"max_model_len {options.max_model_len} is above {spec.name}'s maximum of {spec.max_model_len} "
            "(from its config.json); vLLM refuses it. "
            f"Use max_model_len <= {spec.max_model_len}.",
            "max_model_len",
        )


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
    template = largest_first(nodes)[0]
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
    # The release, the extra arguments and the release's defaults decide what vLLM runs with.
    run = resolve_run(spec, options)
    spec, options = run.spec, run.options
    validate_options(spec, options)
    max_model_len = options.max_model_len or spec.max_model_len
    explicit = any(
        value is not None
        for value in (options.tensor_parallel_size, options.pipeline_parallel_size, options.data_parallel_size)
    )
    layouts = explicit_layouts(spec, nodes, options) if explicit else candidate_layouts(spec, nodes)
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
    _refuse_multi_node_expert_parallel(spec, chosen, options)
    result = _build_plan(spec, chosen, options, max_model_len)
    result.table = render_plan(result.to_dict())
    return result


def _refuse_multi_node_expert_parallel(spec: ModelSpec, evaluation: Evaluation, options: PlanOptions) -> None:
    """Expert parallel across nodes needs one data-parallel group over all of them, which vllm_serve does not start."""
    layout = evaluation.layout
    if not options.enable_expert_parallel or layout.data_parallel_size == 1:
        return
    names = list(dict.fromkeys(node.name for replica in layout.rank_nodes for node in replica))
    if len(names) == 1:
        return
    tp, dp = layout.tensor_parallel_size, layout.data_parallel_size
    stage = min(evaluation.stages, key=lambda item: item.kv_cache_tokens)
    raise PlanError(
        f"{spec.name} with --enable-expert-parallel over {len(names)} nodes: vLLM runs it as one data-parallel group "
        f"(--data-parallel-size {dp}, --data-parallel-size-local {dp // len(names) or 1} per node, EP = TP {tp} x "
        f"DP {dp} = {tp * dp}) with {gib(stage.weights_bytes)} of weights and {evaluation.kv_cache_tokens:,} KV "
        f"tokens per replica ({dp * evaluation.kv_cache_tokens:,} in all). The vllm_serve role starts data-parallel "
        "replicas on one node only (multi-node data parallel needs --headless ranks with --data-parallel-start-rank), "
        "so this plan cannot be deployed by this collection: use data_parallel_size that fits on one node, or "
        "tensor and pipeline parallel across nodes without expert parallel.",
        "data_parallel_size",
    )


def kv_margin(evaluation: Evaluation, options: PlanOptions, max_model_len: int) -> Dict[str, Any]:
    """The KV cache left over one request of max_model_len on the tightest GPU, and the planner's error bound."""
    tightest = min(evaluation.stages, key=lambda stage: stage.kv_cache_tokens)
    per_token = max(tightest.kv_bytes_per_token, 1)
    needed = max_model_len * per_token
    margin_bytes = tightest.kv_cache_bytes - needed
    bound = tightest.error_bound_bytes
    not_modelled = ["kv_transfer_config"] if options.kv_transfer_config else []
    return {
        "kv_cache_bytes_needed": needed,
        "margin_bytes": margin_bytes,
        "margin_tokens": evaluation.kv_cache_tokens - max_model_len,
        "error_bound_bytes": bound,
        "error_bound_tokens": bound // per_token,
        "uncertain": margin_bytes < bound or bool(not_modelled),
        "not_modelled": not_modelled,
    }


def _margin_warnings(evaluation: Evaluation, options: PlanOptions, max_model_len: int, margin: Mapping[str, Any]):
    """Say so when the verdict "fits" is inside the planner's own error, and what makes it safe."""
    warnings = []
    tightest = min(evaluation.stages, key=lambda stage: stage.kv_cache_tokens)
    if tightest.gpu_name.lower() != "cpu" and margin["margin_bytes"] < margin["error_bound_bytes"]:
        per_token = max(tightest.kv_bytes_per_token, 1)
        bound = margin["error_bound_bytes"]
        safe_len = (tightest.kv_cache_bytes - bound) // per_token // options.block_size * options.block_size
        missing = bound - margin["margin_bytes"]
        safe_util = math.ceil((options.gpu_memory_utilization + missing / tightest.cuda_total_bytes) * 100) / 100
        remedies = []
        if safe_len >= options.block_size:
            remedies.append(f"max_model_len {safe_len:,} or lower")
        if safe_util <= 0.98:
            remedies.append(f"gpu_memory_utilization {safe_util:.2f}")
        if KV_CACHE_DTYPE_BYTES[options.kv_cache_dtype] != 1:
            remedies.append("kv_cache_dtype fp8")
        warnings.append(
            f"max_model_len {max_model_len:,} fits with {gib(margin['margin_bytes'])} ({margin['margin_tokens']:,} "
            f"tokens) of KV cache to spare on {tightest.gpu_name}, less than the planner's error bound of "
            f"{gib(bound)} (about {margin['error_bound_tokens']:,} tokens): vLLM may refuse to start. Safe: "
            + (", or ".join(remedies) if remedies else "a larger GPU or more GPUs")
            + "."
        )
    if options.kv_transfer_config:
        connector = options.kv_transfer_config.get("kv_connector", "a KV connector")
        warnings.append(
            f"kv_transfer_config uses {connector}, which can allocate GPU buffers of its own that the planner does "
            "not model; expect less KV cache than planned and check vLLM's 'Available KV cache memory' line."
        )
    return warnings


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
                f"gpu_memory_utilization {options.gpu_memory_utilization} leaves {gib(outside_budget)} outside "
                f"the budget on {stage.gpu_name}, less than the CUDA context and graphs need (about {gib(needed)}); "
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
        f"({gib(last.activation_bytes)}); vLLM 0.16 and later (and 0.10 with FlashInfer installed) profile about "
        f"{gib(freed)} less, about {int(freed // last.kv_bytes_per_token):,} more KV tokens: set vllm_version to "
        "plan for the release you run."
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
        vllm_args=vllm_args(spec, layout, options, max_model_len),
        env=vllm_env(layout, partition, tightest.kv_cache_bytes),
        serving_groups=serving_groups(spec, layout),
        warnings=_warnings(spec, evaluation, options),
    )
    result.margin = kv_margin(evaluation, options, max_model_len)
    result.warnings += _margin_warnings(evaluation, options, max_model_len, result.margin)
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
    return PlanOptions(
        max_model_len=params.get("max_model_len"),
        gpu_memory_utilization=params.get("gpu_memory_utilization"),
        kv_cache_dtype=params.get("kv_cache_dtype") or "auto",
        max_num_batched_tokens=params.get("max_num_batched_tokens"),
        max_num_seqs=params.get("max_num_seqs"),
        tensor_parallel_size=params.get("tensor_parallel_size"),
        pipeline_parallel_size=params.get("pipeline_parallel_size"),
        data_parallel_size=params.get("data_parallel_size"),
        vllm_version=params.get("vllm_version"),
        flashinfer_sampler=params.get("flashinfer_sampler"),
        quantization=params.get("quantization"),
        enforce_eager=bool(params.get("enforce_eager")),
        cpu_offload_gb=float(params.get("cpu_offload_gb") or 0),
        enable_prefix_caching=params.get("enable_prefix_caching"),
        kv_transfer_config=params.get("kv_transfer_config"),
        block_size=params.get("block_size") or DEFAULT_BLOCK_SIZE,
        enable_expert_parallel=bool(params.get("enable_expert_parallel")),
        extra_args=tuple(str(arg) for arg in params.get("vllm_serve_extra_args") or ()),
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
