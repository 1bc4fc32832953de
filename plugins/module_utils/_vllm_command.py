# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ``vllm serve`` arguments and environment of a plan.

The arguments carry the parallel sizes, the memory settings the plan was sized with and the options the user
set (vLLM's own defaults are left to vLLM). The environment makes vLLM split the layers and size a CPU
worker's KV cache as the plan does.
"""

from __future__ import annotations

import json
from typing import Dict, List, Sequence

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import GIB, ModelSpec
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import DEFAULT_BLOCK_SIZE, PlanOptions
from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_layouts import Layout


def vllm_args(spec: ModelSpec, layout: Layout, options: PlanOptions, max_model_len: int) -> List[str]:
    """The plan's ``vllm serve`` flags; serving groups add their own ``--data-parallel-size``."""
    args = [
        "--tensor-parallel-size",
        str(layout.tensor_parallel_size),
        "--pipeline-parallel-size",
        str(layout.pipeline_parallel_size),
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
    # The memory flags the plan was sized with (an extra argument repeated here has the same value: last one wins).
    if options.block_size != DEFAULT_BLOCK_SIZE:
        args += ["--block-size", str(options.block_size)]
    if options.quantization:
        args += ["--quantization", options.quantization]
    if options.enforce_eager:
        args.append("--enforce-eager")
    if options.cpu_offload_gb:
        args += ["--cpu-offload-gb", f"{options.cpu_offload_gb:g}"]
    if options.enable_prefix_caching is not None:
        args.append("--enable-prefix-caching" if options.enable_prefix_caching else "--no-enable-prefix-caching")
    if options.kv_transfer_config:
        args += ["--kv-transfer-config", json.dumps(options.kv_transfer_config, sort_keys=True)]
    if options.enable_expert_parallel:
        args.append("--enable-expert-parallel")
    if spec.dtype == "bfloat16" and any(
        node.kind is not None and not node.kind.bfloat16 for node, _count in layout.nodes_used()
    ):
        args += ["--dtype", "float16"]
    return args


def vllm_env(layout: Layout, layer_partition: Sequence[int], kv_cache_bytes: int) -> Dict[str, str]:
    """The environment vLLM needs to follow the plan: an uneven layer split, and a CPU worker's KV cache in GiB."""
    env: Dict[str, str] = {}
    if len(set(layer_partition)) > 1:
        env["VLLM_PP_LAYER_PARTITION"] = ",".join(str(layers) for layers in layer_partition)
    if layout.rank_nodes[0][0].is_cpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, kv_cache_bytes // GIB))
    return env
