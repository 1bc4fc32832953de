# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The llama.cpp devices a cluster offers, from each node's facts, and the GGUF file the planner reads.

llama-server lists every ``--rpc`` device first, in ``--rpc`` order, then its own GPUs; the head's CPU holds
the input embeddings and every layer that is not offloaded. A worker lends its GPUs through its RPC server
when NVML sees any, else the devices ``llmserve_node_devices`` describes, else its RAM as one CPU device.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Dict, List, Mapping, Sequence

from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_model import GGUFModelError, entry_file
from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_planner import GGUFPlanError


def node_devices(node: Mapping[str, Any], is_head: bool) -> List[Dict[str, Any]]:
    """One node's devices: ``node`` holds ``name``, ``gpu`` (the llmserve_gpu fact), ``described``
    (llmserve_node_devices), ``memory_free_mib`` (free RAM) and ``rpc_endpoint`` (host:port)."""
    name = str(node["name"])
    gpu = node.get("gpu") or {}
    described = node.get("described") or {}
    endpoint = str(node.get("rpc_endpoint") or "")
    free_ram = int(node.get("memory_free_mib") or 0)

    def device(index: int, memory_free_mib: int) -> Dict[str, Any]:
        return {
            "name": f"CUDA{index}" if is_head else f"RPC{index}[{endpoint}]",
            "node": name,
            "kind": "gpu" if is_head else "rpc",
            "memory_free_mib": memory_free_mib,
        }

    devices: List[Dict[str, Any]] = []
    if gpu.get("available"):
        devices = [device(index, int(card["memory_free_mib"])) for index, card in enumerate(gpu.get("gpus") or [])]
    elif not is_head and described:
        devices = [device(index, int(described["gpu_memory_mib"])) for index in range(int(described["gpus"]))]
    elif not is_head:
        devices = [device(0, free_ram)]
    if is_head:
        devices.append({"name": "CPU", "node": name, "kind": "cpu", "memory_free_mib": free_ram})
    return devices


def cluster_devices(nodes: Sequence[Mapping[str, Any]], head: str) -> List[Dict[str, Any]]:
    """Every node's devices in llama-server's order: the workers as given (the ``--rpc`` order), then the head."""
    heads = [node for node in nodes if node.get("name") == head]
    if not heads:
        raise GGUFPlanError(f"nodes: the head {head} is not among the nodes to plan for.", "nodes")
    devices: List[Dict[str, Any]] = []
    for node in nodes:
        if node.get("name") != head:
            devices.extend(node_devices(node, is_head=False))
    return devices + node_devices(heads[0], is_head=True)


def model_dir_entry_file(model_dir: str) -> str:
    """The GGUF file to plan from in ``model_dir`` (the first split of a split model), or a clear error."""
    found = glob.glob(os.path.join(os.path.expanduser(model_dir), "*.gguf"))
    chosen = entry_file(found)
    if not chosen:
        raise GGUFModelError(
            "model_dir: {} holds {}; name the file to plan in model_files (llama_cpp_plan_model_files).".format(
                model_dir,
                "no .gguf file" if not found else "several GGUF models ({})".format(", ".join(sorted(found))),
            ),
            field="model_dir",
        )
    return chosen
