#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

DOCUMENTATION = r"""
---
module: gguf_plan
short_description: Plan how llama.cpp splits a GGUF model over local GPUs and RPC servers, and what each device needs
version_added: 0.1.0
author: llmserve.cluster contributors (@llmserve)
description:
  - Reads the metadata and tensor infos of a GGUF model (split files included) with the C(gguf) Python package,
    never its weights, and places its layers on llama.cpp devices the way C(llama-server) does.
  - Devices are ordered as llama.cpp orders them, every RPC device first, in the order given (the order of
    C(--rpc)), then the local GPUs. The input layer stays on the head's CPU; the output layer goes to the last
    device when all layers are offloaded.
  - Without O(tensor_split), layers are weighed by free memory as llama.cpp does by itself; when that overfills a
    device, whole layers move to devices with room. The split is returned as layer counts, which llama.cpp maps
    back to exactly those layers.
  - Per device it estimates the model buffer (its tensors), the KV cache at O(ctx_size) in O(cache_type_k) and
    O(cache_type_v), and the compute buffer of one O(ubatch_size) micro-batch; for the head's RAM the input
    embeddings, any layers not offloaded and the output layer when it is not offloaded. The same numbers come as a
    table in the spirit of gguf-parser's estimate (C(LAYERS (I + T + O))).
  - Fails when the model does not fit, naming the option to change and what would fit (a shorter context, a
    quantized KV cache, more devices, a smaller quantization), unless O(allow_no_fit) is set.
  - "Runs where the GGUF files are, normally the controller (C(delegate_to: localhost), C(run_once))."
requirements:
  - gguf (Python package)
attributes:
  check_mode:
    support: full
    description: The module only reads files and computes; it behaves the same in check mode.
  diff_mode:
    support: none
    description: Nothing is changed, so there is nothing to diff.
options:
  model_files:
    description:
      - The GGUF file. For a split model (C(name-00001-of-00007.gguf)) the first split is enough; the others are
        found next to it and must all be present.
      - Give this or O(model_dir).
    type: list
    elements: path
  model_dir:
    description:
      - A directory holding the GGUF model instead of O(model_files); the file planned from is the first split of a
        split model, else the only C(*.gguf) file. Several models there is an error naming O(model_files).
    type: path
  devices:
    description:
      - The devices to place layers on, local GPUs of the head (V(gpu)) and remote devices served by C(rpc-server)
        (V(rpc)), with their free memory. Their order among the same kind is kept.
      - A V(cpu) entry describes the head's RAM; its O(devices[].memory_free_mib) is used when
        O(head_ram_free_mib) is not given. It never receives layers unless O(n_gpu_layers) leaves some behind.
      - Give this, or O(nodes) and O(head) to derive the devices from each node's facts.
    type: list
    elements: dict
    suboptions:
      name:
        description: A label for the device, for example the RPC endpoint C(10.0.0.12:50052) or C(head GPU 0).
        type: str
        required: true
      node:
        description: The inventory host the device belongs to.
        type: str
      kind:
        description: V(gpu) for a GPU of the head, V(rpc) for a device behind C(--rpc), V(cpu) for the head's RAM.
        type: str
        choices: [gpu, rpc, cpu]
        default: gpu
      memory_free_mib:
        description: Free memory of the device in MiB (NVML's free memory for a GPU, the memory C(rpc-server) reports).
        type: int
        required: true
  nodes:
    description:
      - Each node's facts, workers in C(--rpc) order, instead of O(devices). A worker lends its NVML GPUs through
        its RPC server, else the devices C(described) lists, else its RAM as one device; the O(head) serves its own
        GPUs (C(CUDA0), ...) and its RAM is the V(cpu) device.
    type: list
    elements: dict
    suboptions:
      name:
        description: The inventory host.
        type: str
        required: true
      gpu:
        description: Its C(llmserve_gpu) fact from M(llmserve.cluster.gpu_facts).
        type: dict
        default: {}
      described:
        description: Its C(llmserve_node_devices) (C(gpus), C(gpu_memory_mib)), for a worker without NVML.
        type: dict
        default: {}
      memory_free_mib:
        description: Its free RAM in MiB (C(ansible_facts.memory_mb.nocache.free)).
        type: int
        required: true
      rpc_endpoint:
        description: C(host:port) its RPC server listens on (a worker), which names its devices.
        type: str
        default: ""
  head:
    description: The node of O(nodes) that runs C(llama-server).
    type: str
  ctx_size:
    description: Context size in tokens (C(--ctx-size)). Defaults to 4096, or the model's context if smaller.
    type: int
  cache_type_k:
    description: Data type of the K cache (C(--cache-type-k)).
    type: str
    choices: [f16, q8_0, q4_0]
    default: f16
  cache_type_v:
    description: Data type of the V cache (C(--cache-type-v)); quantized types need O(flash_attention).
    type: str
    choices: [f16, q8_0, q4_0]
    default: f16
  n_gpu_layers:
    description:
      - Number of layers to offload (C(-ngl)), the output layer included, so the model's block count plus one
        offloads everything. Defaults to everything; layers not offloaded stay in the head's RAM.
    type: int
  tensor_split:
    description:
      - Fix the split (C(--tensor-split)), one weight per device in llama.cpp's order (RPC devices, then GPUs).
        It is evaluated, not changed.
    type: list
    elements: float
  head_ram_free_mib:
    description: Free RAM of the head in MiB, to check the layers it keeps. Without it the head's RAM is not checked.
    type: int
  ubatch_size:
    description: Physical batch size (C(--ubatch-size)), which sizes the compute buffers.
    type: int
    default: 512
  flash_attention:
    description:
      - Whether llama.cpp uses flash attention (its default C(auto) turns it on for CUDA and CPU devices). Without it
        each device also holds the attention scores of every head over the whole context.
    type: bool
    default: true
  allow_no_fit:
    description: Return the plan with RV(plan.fits=false) instead of failing when the model does not fit.
    type: bool
    default: false
notes:
  - The estimate follows llama.cpp's own accounting (C(common_memory_breakdown_print)), so C(llama-server)'s log
    can be compared with it per device.
  - Every device keeps 250 MiB aside for the CUDA context (gguf-parser's VRAM platform footprint).
  - Sliding-window and recurrent caches are counted at full size, which overestimates them.
seealso:
  - module: llmserve.cluster.parallel_plan
"""

EXAMPLES = r"""
- name: Qwen2.5-72B q2_k over two nodes with one P40 each (the worker's GPU behind rpc-server)
  llmserve.cluster.gguf_plan:
    model_files:
      - /srv/models/qwen2.5-72b-instruct-q2_k-00001-of-00007.gguf
    devices:
      - {name: "10.0.0.12:50052", node: worker1, kind: rpc, memory_free_mib: 22000}
      - {name: "head GPU 0", node: head, kind: gpu, memory_free_mib: 22000}
    ctx_size: 8192
  delegate_to: localhost
  run_once: true
  register: llmserve_gguf_plan

- name: Show the estimate
  ansible.builtin.debug:
    msg: "{{ llmserve_gguf_plan.plan.table }}"

- name: Start llama-server with the planned split
  ansible.builtin.debug:
    msg: >-
      llama-server -m {{ llmserve_gguf_plan.plan.model.files[0] }}
      -ngl {{ llmserve_gguf_plan.plan.n_gpu_layers }}
      --tensor-split {{ llmserve_gguf_plan.plan.tensor_split_arg }}
"""

RETURN = r"""
plan:
  description: Where each layer goes and what every device and the head's RAM need.
  returned: success, and on a failure to fit
  type: dict
  contains:
    fits:
      description: Whether every device and the head's RAM hold their part.
      type: bool
      sample: true
    n_gpu_layers:
      description: The C(-ngl) value, the output layer included.
      type: int
      sample: 81
    tensor_split:
      description: Layers per device in llama.cpp's device order, the output layer counted on its device.
      type: list
      elements: float
      sample: [41.0, 40.0]
    tensor_split_arg:
      description: O(tensor_split) as C(--tensor-split) takes it.
      type: str
      sample: "41,40"
    layers:
      description: C(input) (always 1, on the head's CPU), C(transformer) layers offloaded, C(output) 1 when the
        output layer is offloaded, C(on_head) transformer layers left in the head's RAM.
      type: dict
      sample: {input: 1, transformer: 80, output: 1, on_head: 0}
    devices:
      description:
        - Per device in llama.cpp's order, C(name), C(node), C(kind), C(llama_device) (its name in llama.cpp's log,
          C(RPC0) or C(CUDA0)), C(layers), C(output_layer), C(weights_mib), C(kv_cache_mib), C(compute_buffer_mib),
          C(total_mib), C(reserve_mib), C(free_mib) and C(fits).
      type: list
      elements: dict
      sample: [{name: "10.0.0.12:50052", node: worker1, kind: rpc, llama_device: RPC0, layers: 41,
                output_layer: false, weights_mib: 13868.57, kv_cache_mib: 1312.0, compute_buffer_mib: 243.5,
                total_mib: 15424.07, reserve_mib: 250.0, free_mib: 22000, fits: true}]
    head_ram_mib:
      description: RAM the head needs for llama.cpp's host buffers (input embeddings, layers not offloaded, compute).
      type: float
      sample: 414.39
    head:
      description: The head's RAM split as C(weights_mib), C(kv_cache_mib), C(compute_buffer_mib), C(total_mib),
        C(free_mib), C(fits).
      type: dict
    ctx_size:
      description: The context size planned for; C(ctx_cells) is it rounded up to llama.cpp's 256.
      type: int
      sample: 8192
    table:
      description: The estimate as a boxed table.
      type: str
    advice:
      description: When it does not fit, why and what would; null when it fits.
      type: str
    model:
      description: What was read from the GGUF files (architecture, block_count, head_count, head_count_kv,
        context_length, vocab_size, file_type, tensor_types, size_bytes, files, ...).
      type: dict
field:
  description: On failure, the option to change.
  returned: failure
  type: str
  sample: devices
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_devices import (
    cluster_devices,
    model_dir_entry_file,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_model import GGUFModelError, read_gguf_model
from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_planner import GGUFPlanError, plan_gguf

CACHE_TYPES = ["f16", "q8_0", "q4_0"]
ARGUMENT_SPEC = dict(
    model_files=dict(type="list", elements="path"),
    model_dir=dict(type="path"),
    devices=dict(
        type="list",
        elements="dict",
        options=dict(
            name=dict(type="str", required=True),
            node=dict(type="str"),
            kind=dict(type="str", choices=["gpu", "rpc", "cpu"], default="gpu"),
            memory_free_mib=dict(type="int", required=True),
        ),
    ),
    nodes=dict(
        type="list",
        elements="dict",
        options=dict(
            name=dict(type="str", required=True),
            gpu=dict(type="dict", default={}),
            described=dict(type="dict", default={}),
            memory_free_mib=dict(type="int", required=True),
            rpc_endpoint=dict(type="str", default=""),
        ),
    ),
    head=dict(type="str"),
    ctx_size=dict(type="int"),
    cache_type_k=dict(type="str", choices=CACHE_TYPES, default="f16"),
    cache_type_v=dict(type="str", choices=CACHE_TYPES, default="f16"),
    n_gpu_layers=dict(type="int"),
    tensor_split=dict(type="list", elements="float"),
    head_ram_free_mib=dict(type="int"),
    ubatch_size=dict(type="int", default=512),
    flash_attention=dict(type="bool", default=True),
    allow_no_fit=dict(type="bool", default=False),
)
MUTUALLY_EXCLUSIVE = [("model_files", "model_dir"), ("devices", "nodes")]
REQUIRED_ONE_OF = [("model_files", "model_dir"), ("devices", "nodes")]
REQUIRED_TOGETHER = [("nodes", "head")]
PLAN_OPTIONS = (
    "ctx_size",
    "cache_type_k",
    "cache_type_v",
    "n_gpu_layers",
    "tensor_split",
    "head_ram_free_mib",
    "ubatch_size",
    "flash_attention",
)


def no_fit_field(params):
    """The option a user who gave it would change first; otherwise the devices."""
    for option in ("tensor_split", "n_gpu_layers"):
        if params.get(option) is not None:
            return option
    return "devices"


def run_plan(params, fail):
    """Plan and return the module result, or call ``fail(msg=..., field=...)``."""
    try:
        model_files = params.get("model_files") or [model_dir_entry_file(params["model_dir"])]
        devices = params.get("devices") or cluster_devices(params["nodes"], params["head"])
        model = read_gguf_model(model_files)
        plan = plan_gguf(model, devices, **{option: params.get(option) for option in PLAN_OPTIONS})
    except (GGUFModelError, GGUFPlanError) as error:
        return fail(msg=str(error), field=error.field)
    if not plan["fits"] and not params.get("allow_no_fit"):
        field = no_fit_field(params)
        return fail(
            msg="{}: {} Set allow_no_fit to get the plan anyway.\n{}".format(field, plan["advice"], plan["table"]),
            field=field,
            plan=plan,
        )
    return dict(changed=False, plan=plan)


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        mutually_exclusive=MUTUALLY_EXCLUSIVE,
        required_one_of=REQUIRED_ONE_OF,
        required_together=REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    try:
        import gguf  # noqa: F401 - only to report a missing library clearly
    except ImportError:
        module.fail_json(msg=missing_required_lib("gguf"), field="model_files")
    module.exit_json(**run_plan(module.params, module.fail_json))


if __name__ == "__main__":
    main()
