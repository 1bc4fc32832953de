#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: parallel_plan
short_description: Plan how vLLM splits a model over GPUs and nodes, and how much KV cache it gets
version_added: 0.1.0
author: llmserve.cluster contributors (@llmserve)
description:
  - Chooses the tensor-, pipeline- and data-parallel sizes for serving a model with vLLM on a cluster, following
    vLLM's distributed-serving guide, or validates sizes you give so that vLLM will not reject them.
  - The rule is one GPU when the model fits one; tensor parallel over the GPUs of one node when it fits a node;
    tensor parallel within nodes and pipeline parallel across all nodes otherwise; and pipeline parallel over a
    node's GPUs when their count does not divide the attention heads.
  - Sizes memory as vLLM V1 does. Each worker may use O(gpu_memory_utilization) times the memory CUDA reports;
    the weights it loads, the activation peak of a profile run of O(max_num_batched_tokens) tokens (with the
    sampler over O(max_num_seqs) rows of logits) and memory outside torch come off; the rest is KV cache,
    counted in 16-token blocks. The engine gets the smallest KV cache of any worker.
  - Reads only C(config.json) and the safetensors size information of the model, never its weights, so a plan
    can be made before downloading, and for hardware you do not own.
  - Runs on the controller through its action plugin. When O(cluster) is omitted, the action builds it from the
    C(llmserve_gpu) facts (M(llmserve.cluster.gpu_facts)) of the play's hosts.
  - Fails with a message naming the option to change when vLLM would refuse the sizes, and with why and what
    would fit (more nodes, a shorter O(max_model_len), an fp8 KV cache) when no layout holds the model.
attributes:
  check_mode:
    support: full
    description: The module only computes; it behaves the same in check mode.
  diff_mode:
    support: none
    description: Nothing is changed, so there is nothing to diff.
options:
  model_dir:
    description:
      - Directory on the controller with the model's C(config.json) and either C(model.safetensors.index.json)
        (its C(metadata.total_size) is used; the shards need not be present) or the C(*.safetensors) files,
        whose headers are read.
      - Mutually exclusive with O(model).
    type: path
  model:
    description:
      - Hugging Face repository id, for example C(Qwen/Qwen3-8B). Only C(config.json) and the safetensors metadata
        are fetched (with C(huggingface_hub) on the controller; set E(HF_TOKEN) for gated repositories).
      - Mutually exclusive with O(model_dir).
    type: str
  revision:
    description: Branch, tag or commit of O(model). Defaults to the repository's main branch.
    type: str
  cluster:
    description:
      - The nodes to plan for, in rank order (the first node hosts rank 0, so list the head first).
      - Omit it to plan for the play's hosts from their C(llmserve_gpu) facts; give it to plan for hardware you do
        not have.
      - "A host whose C(llmserve_node_devices) variable is set (for example C({gpus: 1, gpu_memory_mib: 1024,
        gpu_name: cpu}) for a vLLM CPU worker) is described by it instead of its facts."
    type: list
    elements: dict
    suboptions:
      name:
        description: Node name (an inventory hostname, or any label for a hypothetical node).
        type: str
        required: true
      gpus:
        description: Number of GPUs in the node.
        type: int
        required: true
      gpu_memory_mib:
        description: Memory of one GPU as NVML reports it (C(nvidia-smi) "Total"), in MiB; for example 81559 for
          an H100 80GB. The planner subtracts what the driver reserves to get what CUDA sees.
        type: int
        required: true
      gpu_name:
        description:
          - GPU model as NVML names it, for example C(NVIDIA H100 80GB HBM3). It selects vLLM's default batch size
            and the driver's reserved memory; V(cpu) describes a vLLM CPU worker whose O(cluster[].gpu_memory_mib)
            is its KV cache space.
        type: str
        default: unknown
  head:
    description:
      - Name of the node that hosts rank 0 (the Ray head, or rank 0 of vLLM's native multi-node mode). It is moved to
        the front of O(cluster); the other nodes keep their order.
    type: str
  exclude_nodes:
    description:
      - Nodes of O(cluster) (or of the play) to leave out of the plan, such as hosts being decommissioned.
      - The head cannot be left out; name another head first.
    type: list
    elements: str
    default: []
  max_model_len:
    description: Longest request (prompt plus output) in tokens. Defaults to the model's own maximum.
    type: int
  gpu_memory_utilization:
    description:
      - Fraction of each GPU's memory vLLM may use, in (0, 1].
      - Defaults to the default of O(vllm_version) (0.9 up to vLLM 0.19, 0.92 from 0.20).
    type: float
  kv_cache_dtype:
    description: Data type of the KV cache; V(auto) uses the model's data type, the fp8 types halve it.
    type: str
    choices: [auto, bfloat16, float16, fp8, fp8_e4m3, fp8_e5m2, fp8_inc, fp8_ds_mla]
    default: auto
  max_num_batched_tokens:
    description:
      - Tokens per scheduler step, which sizes the profile run. Defaults to what vLLM picks for the GPU of rank 0
        (8192 on GPUs with at least 70 GiB other than the A100, otherwise 2048).
    type: int
  max_num_seqs:
    description: Requests per step, which sizes the sampler's profile run. Defaults to vLLM's (1024 or 256 likewise).
    type: int
  tensor_parallel_size:
    description: Fix the tensor-parallel size; it is validated, not chosen. It may span nodes when vLLM accepts it.
    type: int
  pipeline_parallel_size:
    description: Fix the pipeline-parallel size. Without it, the smallest size that fits is used.
    type: int
  data_parallel_size:
    description: Number of engine replicas, each of O(tensor_parallel_size) x O(pipeline_parallel_size) GPUs.
    type: int
  vllm_version:
    description:
      - The vLLM release that will serve, for example C(0.32.0). Its memory accounting changed across releases
        (sampler kernels, when NCCL is initialised), which moves the KV cache by more than 10% on some plans.
      - Without it the planner assumes vLLM 0.10 or older with PyTorch's sampler, and warns where that matters.
    type: str
  flashinfer_sampler:
    description:
      - Whether vLLM's FlashInfer sampler is in use (it needs less profile-run memory than PyTorch's sort).
        Defaults to what the given O(vllm_version) uses by default.
    type: bool
  vllm_serve_extra_args:
    description:
      - The extra C(vllm serve) arguments the deployment passes (C(vllm_serve_extra_args)). The flags among them
        that change memory (C(--quantization), C(--kv-cache-dtype), C(--block-size), C(--enforce-eager),
        C(--max-num-seqs), C(--max-num-batched-tokens), C(--cpu-offload-gb), C(--enable-prefix-caching),
        C(--kv-transfer-config), C(--gpu-memory-utilization), C(--max-model-len), the parallel sizes and
        C(--enable-expert-parallel)) are planned with; one that contradicts the matching option is an error.
    type: list
    elements: str
    default: []
  quantization:
    description:
      - C(--quantization) at load time. V(fp8) on an unquantized checkpoint keeps one byte per linear weight;
        the checkpoint's own method changes nothing; other methods are refused.
    type: str
  enforce_eager:
    description: C(--enforce-eager). No CUDA graphs, so from vLLM 0.20 no graph estimate comes off the KV cache.
    type: bool
    default: false
  cpu_offload_gb:
    description: C(--cpu-offload-gb). GiB of weights per GPU kept in host memory, which the KV cache gains.
    type: float
    default: 0
  enable_prefix_caching:
    description: C(--enable-prefix-caching) or its C(--no-) form. Passed on; it does not change the KV cache's size.
    type: bool
  kv_transfer_config:
    description:
      - C(--kv-transfer-config). Passed on; the connector's own GPU buffers are not modelled, so the plan marks
        its verdict uncertain and warns.
    type: dict
  block_size:
    description: C(--block-size), the KV cache block in tokens; the KV token count is rounded down to whole blocks.
    type: int
    default: 16
  enable_expert_parallel:
    description:
      - C(--enable-expert-parallel) for mixture-of-experts models; EP = O(tensor_parallel_size) x
        O(data_parallel_size) ranks each hold whole experts.
      - Expert parallel over more than one node is refused with its capacity, since vllm_serve starts data-parallel
        replicas on one node only.
    type: bool
    default: false
notes:
  - The memory model is checked against vLLM's own startup logs (C(GPU KV cache size)) of releases 0.9 to 0.32, see
    the observations in the collection's tests and C(benchmarks/planner_accuracy.py) (median error 0.4%, worst 3.7%).
    Other releases are refused. The plan's C(margin) gives the KV cache left over one O(max_model_len) request and
    the planner's error bound; when the margin is inside the bound the plan warns and names a safe setting.
seealso:
  - module: llmserve.cluster.gpu_facts
"""

EXAMPLES = r"""
- name: Plan for the GPUs of the inventory (after llmserve.cluster.gpu_facts)
  llmserve.cluster.parallel_plan:
    model_dir: /srv/models/Qwen2.5-72B-Instruct
    max_model_len: 32768
  run_once: true
  register: llmserve_plan

- name: What would DeepSeek-R1 need on 4 x 8 A800-80GB?
  llmserve.cluster.parallel_plan:
    model: unsloth/DeepSeek-R1-BF16
    cluster:
      - {name: node1, gpus: 8, gpu_memory_mib: 81920, gpu_name: NVIDIA A800-SXM4-80GB}
      - {name: node2, gpus: 8, gpu_memory_mib: 81920, gpu_name: NVIDIA A800-SXM4-80GB}
      - {name: node3, gpus: 8, gpu_memory_mib: 81920, gpu_name: NVIDIA A800-SXM4-80GB}
      - {name: node4, gpus: 8, gpu_memory_mib: 81920, gpu_name: NVIDIA A800-SXM4-80GB}
  delegate_to: localhost
  register: llmserve_plan

- name: Print the plan table
  ansible.builtin.debug:
    msg: "{{ llmserve_plan.plan.table }}"
"""

RETURN = r"""
plan:
  description: The parallel layout and per-GPU memory of the chosen (or validated) plan.
  returned: success
  type: dict
  contains:
    strategy:
      description: One of V(single_gpu), V(tensor_parallel), V(tensor_pipeline_parallel), V(pipeline_parallel).
      type: str
      sample: tensor_pipeline_parallel
    tensor_parallel_size:
      description: GPUs that split every layer.
      type: int
      sample: 8
    pipeline_parallel_size:
      description: Pipeline stages, each a contiguous run of layers.
      type: int
      sample: 4
    data_parallel_size:
      description: Engine replicas.
      type: int
      sample: 1
    world_size:
      description: GPUs of one replica, O(tensor_parallel_size) x O(pipeline_parallel_size).
      type: int
      sample: 32
    nodes:
      description: The nodes used, in rank order, with the GPUs each contributes and its pipeline stages.
      type: list
      elements: dict
      sample: [{name: node1, gpu_name: NVIDIA A800-SXM4-80GB, gpus: 8, gpus_used: 8, gpu_memory_mib: 81920,
                first_rank: 0, pipeline_stages: [0]}]
    layer_partition:
      description: Layers per pipeline stage, placed as vLLM's C(get_pp_indices) places them.
      type: list
      elements: int
      sample: [15, 15, 16, 15]
    pipeline_stages:
      description: Per stage, its layers, nodes and the memory of one of its GPUs (bytes), KV tokens included.
      type: list
      elements: dict
    per_gpu:
      description:
        - Memory of one GPU in bytes, C(weights_bytes) and C(activation_bytes) of the heaviest stage,
          C(kv_cache_bytes) of the tightest one, plus C(non_torch_bytes), C(budget_bytes), C(cuda_total_bytes)
          and C(cuda_graph_bytes) (graphs are captured outside the budget).
      type: dict
      sample: {weights_bytes: 35276853248, activation_bytes: 5125173248, kv_cache_bytes: 34423635968}
    kv_cache_tokens:
      description: Tokens the KV cache of one replica holds (vLLM's "GPU KV cache size").
      type: int
      sample: 420208
    max_concurrency:
      description: Requests of O(max_model_len) tokens served at once, over all replicas.
      type: float
      sample: 3.21
    max_model_len:
      description: The context length planned for.
      type: int
      sample: 131072
    max_num_batched_tokens:
      description: Tokens of the profile run (the user's value or vLLM's default for the GPU).
      type: int
      sample: 8192
    max_num_seqs:
      description: Requests of the sampler's profile run.
      type: int
      sample: 1024
    gpu_memory_utilization:
      description: The fraction planned with.
      type: float
      sample: 0.9
    kv_cache_dtype:
      description: The KV cache data type planned with.
      type: str
      sample: auto
    kv_bytes_per_token:
      description: KV cache bytes one token takes on one GPU of the tightest stage.
      type: int
      sample: 81920
    model:
      description: What was read about the model (architecture, sizes, weight bytes and where they came from).
      type: dict
    vllm_args:
      description: The C(vllm serve) flags that realise the plan, one list item per word.
      type: list
      elements: str
      sample: ["--tensor-parallel-size", "8", "--pipeline-parallel-size", "4", "--max-model-len", "163840",
               "--gpu-memory-utilization", "0.9"]
    env:
      description: Environment variables the plan needs on every node, for example C(VLLM_PP_LAYER_PARTITION).
      type: dict
      sample: {VLLM_PP_LAYER_PARTITION: "15,15,16,15"}
    margin:
      description:
        - The KV cache left over one O(max_model_len) request on the tightest GPU (C(margin_bytes),
          C(margin_tokens)), the planner's error bound (C(error_bound_bytes), C(error_bound_tokens)), C(uncertain)
          when the margin is inside the bound or something is not modelled (C(not_modelled), e.g.
          C(kv_transfer_config)).
      type: dict
      sample: {margin_bytes: 590000000, margin_tokens: 2176, error_bound_bytes: 560000000, uncertain: false}
    serving_groups:
      description:
        - Independent vLLM servers, each with its API on its first node. Data-parallel replicas that share a node
          are one group (C(vllm_args) adds C(--data-parallel-size)); a replica that spans nodes is a group of its
          own. One replica is one group of every node.
        - Each has C(nodes) (rank order), C(replicas), C(data_parallel_size), C(endpoint_node) and C(vllm_args).
      type: list
      elements: dict
      sample: [{nodes: [node1], replicas: [0], data_parallel_size: 1, endpoint_node: node1, vllm_args: []},
               {nodes: [node2], replicas: [1], data_parallel_size: 1, endpoint_node: node2, vllm_args: []}]
    warnings:
      description: Things that work but deserve attention (TP across nodes, replicated KV heads, uneven stages).
      type: list
      elements: str
    table:
      description: A human-readable estimate in boxes, in the spirit of gguf-parser's table.
      type: str
field:
  description: On failure, the option to change.
  returned: failure
  type: str
  sample: tensor_parallel_size
suggestions:
  description: On a failure to fit, the alternatives that would fit.
  returned: failure
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import ModelSpecError
from ansible_collections.llmserve.cluster.plugins.module_utils._parallel_planner import NoFitError, plan_from_params
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import PlanError
from ansible_collections.llmserve.cluster.plugins.module_utils._vllm_memory import KV_CACHE_DTYPE_BYTES

ARGUMENT_SPEC = dict(
    model_dir=dict(type="path"),
    model=dict(type="str"),
    revision=dict(type="str"),
    cluster=dict(
        type="list",
        elements="dict",
        options=dict(
            name=dict(type="str", required=True),
            gpus=dict(type="int", required=True),
            gpu_memory_mib=dict(type="int", required=True),
            gpu_name=dict(type="str", default="unknown"),
        ),
    ),
    head=dict(type="str"),
    exclude_nodes=dict(type="list", elements="str", default=[]),
    max_model_len=dict(type="int"),
    gpu_memory_utilization=dict(type="float"),
    kv_cache_dtype=dict(type="str", default="auto", choices=list(KV_CACHE_DTYPE_BYTES)),
    max_num_batched_tokens=dict(type="int", no_log=False),
    max_num_seqs=dict(type="int"),
    tensor_parallel_size=dict(type="int"),
    pipeline_parallel_size=dict(type="int"),
    data_parallel_size=dict(type="int"),
    vllm_version=dict(type="str"),
    flashinfer_sampler=dict(type="bool"),
    vllm_serve_extra_args=dict(type="list", elements="str", default=[]),
    quantization=dict(type="str"),
    enforce_eager=dict(type="bool", default=False),
    cpu_offload_gb=dict(type="float", default=0),
    enable_prefix_caching=dict(type="bool"),
    kv_transfer_config=dict(type="dict"),
    block_size=dict(type="int", default=16),
    enable_expert_parallel=dict(type="bool", default=False),
)
MUTUALLY_EXCLUSIVE = [("model_dir", "model")]
REQUIRED_ONE_OF = [("model_dir", "model")]
REQUIRED_BY = {"revision": ("model",)}


def run_plan(params, fail):
    """Plan and return the module result, or call ``fail(msg=..., **extra)`` with the field to change."""
    try:
        result = plan_from_params(params)
    except NoFitError as error:
        return fail(msg=str(error), field=error.field, suggestions=error.suggestions)
    except (PlanError, ModelSpecError) as error:
        return fail(msg=str(error), field=error.field)
    return dict(changed=False, plan=result.to_dict())


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=MUTUALLY_EXCLUSIVE,
        required_one_of=REQUIRED_ONE_OF,
        required_by=REQUIRED_BY,
        supports_check_mode=True,
    )
    if not module.params["cluster"]:
        # Only the action plugin can read other hosts' facts; the module alone needs the cluster spelled out.
        module.fail_json(msg="cluster: give the nodes to plan for (the action plugin builds it from gpu_facts).")
    module.exit_json(**run_plan(module.params, module.fail_json))


if __name__ == "__main__":
    main()
