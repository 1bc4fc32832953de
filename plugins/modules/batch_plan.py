#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: batch_plan
short_description: Split the cluster into vLLM instances for an offline batch job
version_added: 0.1.0
description:
  - Decides how many copies of C(vllm.LLM) an offline Ray Data job runs and how big each is, as in vLLM's
    Ray Data example. Sizes left at 0 come from the serving plan (C(llmserve_plan)); the number of
    instances left at 0 is every GPU of the cluster divided by the GPUs of one instance (TP x PP).
  - An instance of more than one GPU gets one placement group (one bundle per GPU worker), C(STRICT_PACK)
    when a node can hold it, else C(PACK).
  - Engine arguments come from the plan's C(vllm_args) without its parallel sizes; the environment from its
    C(env) (C(VLLM_PP_LAYER_PARTITION) only when the pipeline size is the plan's).
  - The action plugin builds O(cluster) from every host of O(hosts) as C(llmserve.cluster.parallel_plan)
    does (C(llmserve_gpu) facts, or C(llmserve_node_devices)), when O(cluster) is not given.
author: llmserve.cluster contributors (@llmserve)
attributes:
  check_mode:
    support: full
    description: Only computes.
  diff_mode:
    support: none
    description: Changes nothing.
options:
  cluster:
    description: Nodes as C({name, gpus, gpu_memory_mib, gpu_name}); C(gpu_name=cpu) marks vLLM CPU workers.
    type: list
    elements: dict
  hosts:
    description: Inventory hosts to build O(cluster) from when it is not given; default every host of the
      C(llmserve_cluster) group.
    type: list
    elements: str
  plan:
    description: The serving plan (C(llmserve_plan), the C(plan) that C(llmserve.cluster.parallel_plan) returns).
    type: dict
    default: {}
  tensor_parallel_size:
    description: GPUs per pipeline stage of one instance; 0 takes the plan's.
    type: int
    default: 0
  pipeline_parallel_size:
    description: Pipeline stages of one instance; 0 takes the plan's.
    type: int
    default: 0
  num_instances:
    description: Instances to run; 0 fills the cluster.
    type: int
    default: 0
  device:
    description: C(gpu) or C(cpu) (vLLM's CPU build); C(auto) says C(cpu) when every node's C(gpu_name) is
      C(cpu).
    type: str
    choices: [auto, gpu, cpu]
    default: auto
  cpus_per_instance:
    description: CPUs Ray reserves for each instance's actor.
    type: float
    default: 1.0
"""

EXAMPLES = r"""
- name: Split the cluster for the batch job
  llmserve.cluster.batch_plan:
    plan: "{{ llmserve_plan }}"
    tensor_parallel_size: 1
  run_once: true
  register: batch_layout

- name: Plan for described hardware (two nodes of 8 H100)
  llmserve.cluster.batch_plan:
    cluster:
      - {name: node1, gpus: 8, gpu_memory_mib: 81559, gpu_name: NVIDIA H100 80GB HBM3}
      - {name: node2, gpus: 8, gpu_memory_mib: 81559, gpu_name: NVIDIA H100 80GB HBM3}
    tensor_parallel_size: 4
"""

RETURN = r"""
layout:
  description: The batch job's instances and how each is placed and started.
  returned: success
  type: dict
  contains:
    device:
      description: C(gpu) or C(cpu).
      type: str
      sample: gpu
    num_instances:
      description: Copies of C(vllm.LLM) the job runs at once.
      type: int
      sample: 4
    tensor_parallel_size:
      description: Tensor parallel size of each instance.
      type: int
      sample: 4
    pipeline_parallel_size:
      description: Pipeline parallel size of each instance.
      type: int
      sample: 1
    gpus_per_instance:
      description: TP x PP.
      type: int
      sample: 4
    total_gpus:
      description: GPUs of the whole cluster.
      type: int
      sample: 16
    cpus_per_instance:
      description: CPUs reserved per instance.
      type: float
      sample: 1.0
    placement:
      description: Placement-group C(bundles) of one instance and its C(strategy); empty bundles for one GPU.
      type: dict
      sample: {bundles: [{GPU: 1.0, CPU: 1.0}, {GPU: 1.0, CPU: 1.0}], strategy: STRICT_PACK}
    engine_arguments:
      description: C(vllm.LLM) keyword arguments from the plan.
      type: dict
      sample: {max_model_len: 8192, gpu_memory_utilization: 0.9}
    environment:
      description: Environment for the instances from the plan.
      type: dict
      sample: {VLLM_CPU_KVCACHE_SPACE: "1"}
summary:
  description: The layout in one line.
  returned: success
  type: str
  sample: 4 instance(s) of vLLM, each TP 4 x PP 1 = 4 GPU(s), over 16 GPU(s) in the cluster
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.llmserve.cluster.plugins.module_utils._batch_inference import (
    DEVICES,
    BatchPlanError,
    batch_layout,
    describe,
    layout_warnings,
)

ARGUMENT_SPEC = dict(
    cluster=dict(type="list", elements="dict"),
    hosts=dict(type="list", elements="str"),
    plan=dict(type="dict", default={}),
    tensor_parallel_size=dict(type="int", default=0),
    pipeline_parallel_size=dict(type="int", default=0),
    num_instances=dict(type="int", default=0),
    device=dict(type="str", choices=list(DEVICES), default="auto"),
    cpus_per_instance=dict(type="float", default=1.0),
)


def run_batch_plan(params):
    """The module's answer as a dict: layout and summary, or failed with the option to change."""
    try:
        layout = batch_layout(
            params.get("cluster") or [],
            plan=params.get("plan"),
            tensor_parallel_size=params.get("tensor_parallel_size") or 0,
            pipeline_parallel_size=params.get("pipeline_parallel_size") or 0,
            num_instances=params.get("num_instances") or 0,
            device=params.get("device") or "auto",
            cpus_per_instance=params.get("cpus_per_instance") or 1.0,
        )
    except BatchPlanError as error:
        return dict(failed=True, msg=str(error), field=error.field)
    return dict(changed=False, layout=layout, summary=describe(layout), warnings=layout_warnings(layout))


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    if not module.params["cluster"]:
        module.fail_json(msg="cluster is required when the module runs without its action plugin.", field="cluster")
    result = run_batch_plan(module.params)
    if result.get("failed"):
        module.fail_json(**{key: value for key, value in result.items() if key != "failed"})
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
