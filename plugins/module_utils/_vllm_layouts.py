# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Which parallel sizes vLLM accepts for a model, and how the ranks of a plan are laid out over the cluster.

The rules are vLLM's own checks: attention and KV heads against tensor_parallel_size, the padded vocabulary,
and quantization group and block sizes against each rank's shard; pipeline stages split the layers as vLLM's
``get_pp_indices`` does. Layouts give ranks to GPUs node by node, in the order of preference of vLLM's
distributed-serving guide, and serving_groups splits a layout's replicas into independent vLLM servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import ModelSpec
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import ClusterNode, PlanError, PlanOptions

STRATEGIES = ("single_gpu", "tensor_parallel", "tensor_pipeline_parallel", "pipeline_parallel")

# vLLM pads the vocabulary to a multiple of 64 before splitting embeddings and the output head over TP.
VOCAB_PADDING = 64
# AWQ and GPTQ pack eight 4-bit values into one int32 along the packed dimension.
INT4_PACK_FACTOR = 8


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


def largest_first(nodes: Sequence[ClusterNode]) -> List[ClusterNode]:
    return sorted(nodes, key=lambda node: node.gpus * node.cuda_total_bytes, reverse=True)


def candidate_layouts(spec: ModelSpec, nodes: Sequence[ClusterNode]) -> List[Layout]:
    """Layouts in the guide's order of preference; the first that fits is the plan."""
    layouts: List[Layout] = []
    best_gpu = max(nodes, key=lambda node: node.cuda_total_bytes)
    layouts.append(Layout(1, 1, 1, [[best_gpu]]))
    for node in largest_first(nodes):
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


def explicit_layouts(spec: ModelSpec, nodes: Sequence[ClusterNode], options: PlanOptions) -> List[Layout]:
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
