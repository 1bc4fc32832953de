# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The vllm_serve unit rendered for a real 2 x 8 H100 plan, compared with a reviewed golden file.

The plan comes from the planner (DeepSeek-R1, FP8, 2 nodes of 8 H100-80GB, Ray backend); the unit
is rendered by ansible-playbook from the role's own template. Reviewed against vLLM's
distributed-serving docs: TP = GPUs per node (8), PP = nodes (2), --distributed-executor-backend
ray, the NCCL/GLOO/VLLM_HOST_IP environment in the unit (not a shell), the API key only through
the 0600 EnvironmentFile, the API on the cluster address, HF_HUB_OFFLINE=1.
Set LLMSERVE_UPDATE_GOLDEN=1 to rewrite the golden file after a deliberate change, then review it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ansible_collections.llmserve.cluster.plugins.module_utils._serving_groups import node_role
from ansible_collections.llmserve.cluster.plugins.modules.parallel_plan import run_plan

REPO_ROOT = Path(__file__).resolve().parents[3]
GOLDEN = REPO_ROOT / "tests" / "unit" / "fixtures" / "golden" / "vllm-ray-2x8-h100.service"
MODEL_DIR = REPO_ROOT / "tests" / "unit" / "fixtures" / "models" / "DeepSeek-R1"
NODES = [
    {"name": "gpu-node-01", "gpus": 8, "gpu_memory_mib": 81559, "gpu_name": "NVIDIA H100 80GB HBM3"},
    {"name": "gpu-node-02", "gpus": 8, "gpu_memory_mib": 81559, "gpu_name": "NVIDIA H100 80GB HBM3"},
]
# What fabric_facts recommends on the head of an 8-port InfiniBand node (see the sysfs fixtures).
HEAD_ENVIRONMENT = {
    "GLOO_SOCKET_IFNAME": "ens1f0",
    "NCCL_IB_HCA": "=mlx5_0:1,mlx5_1:1,mlx5_2:1,mlx5_3:1,mlx5_4:1,mlx5_5:1,mlx5_6:1,mlx5_7:1",
    "NCCL_SOCKET_IFNAME": "=ens1f0",
    "VLLM_HOST_IP": "10.20.0.11",
}
PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.template:
        src: "{{ template }}"
        dest: "{{ output }}"
        mode: "0644"
"""


TEMPLATE = REPO_ROOT / "roles" / "vllm_serve" / "templates" / "vllm.service.j2"


def render(tmp_path: Path, variables: dict, template: Path = TEMPLATE) -> str:
    playbook = tmp_path / "render.yml"
    playbook.write_text(PLAYBOOK)
    output = tmp_path / "vllm.service"
    variables = dict(
        variables,
        template=str(template),
        output=str(output),
        ansible_python_interpreter=sys.executable,
    )
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    completed = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            str(playbook),
            "-e",
            f"@{tmp_path / 'vars.json'}",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,  # no ansible.cfg there: Ansible's defaults, like a user's first run
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return output.read_text()


def test_ray_unit_for_a_2x8_plan_matches_the_reviewed_golden_file(tmp_path):
    def fail(**result):
        raise AssertionError(result)

    params = {
        name: None
        for name in (
            "model",
            "revision",
            "head",
            "max_model_len",
            "max_num_batched_tokens",
            "max_num_seqs",
            "tensor_parallel_size",
            "pipeline_parallel_size",
            "data_parallel_size",
            "flashinfer_sampler",
        )
    }
    params.update(
        model_dir=str(MODEL_DIR),
        cluster=NODES,
        gpu_memory_utilization=0.9,
        kv_cache_dtype="auto",
        max_model_len=32768,
        vllm_version="0.32.0",
    )
    plan = run_plan(params, fail)["plan"]
    assert (plan["tensor_parallel_size"], plan["pipeline_parallel_size"]) == (8, 2)
    unit = render(
        tmp_path,
        {
            "vllm_serve_backend": "ray",
            "vllm_serve_plan": plan,
            "__vllm_serve_node_rank": 0,
            "__vllm_serve_role": node_role(plan, "gpu-node-01"),
            "__vllm_serve_master_addr": "10.20.0.11",
            "vllm_serve_node_environment": HEAD_ENVIRONMENT,
            "vllm_serve_environment": {},
            "vllm_serve_extra_args": [],
            "vllm_serve_venv": "/opt/llmserve/venv",
            "vllm_serve_model_path": "/srv/models/DeepSeek-R1",
            "vllm_serve_served_model_name": "DeepSeek-R1",
            "vllm_serve_user": "llmserve",
            "vllm_serve_config_dir": "/etc/llmserve",
            "vllm_serve_host": "10.20.0.11",
            "vllm_serve_port": 8000,
            "vllm_serve_master_port": 29555,
            "vllm_serve_restart_sec": 10,
            "vllm_serve_ray_gcs_port": 6379,
            "vllm_serve_ray_auth_token_path": "/etc/llmserve/ray/token",
        },
    )
    if os.environ.get("LLMSERVE_UPDATE_GOLDEN"):
        GOLDEN.write_text(unit)
    assert unit == GOLDEN.read_text()
    assert "VLLM_API_KEY" not in unit and "--api-key" not in unit
    assert "--tensor-parallel-size 8" in unit.replace("'", "") and "--pipeline-parallel-size 2" in unit


# --- the native backend: one serving group per replica -------------------------------------------------------

NATIVE_GOLDEN = REPO_ROOT / "tests" / "unit" / "fixtures" / "golden" / "vllm-native-2x4-h100-rank1.service"
NATIVE_ADDRESSES = {"gpu-node-01": "10.20.0.11", "gpu-node-02": "10.20.0.12", "gpu-node-03": "10.20.0.13"}


def native_plan(nodes, **sizes) -> dict:
    params = {
        name: None
        for name in ("model", "revision", "head", "max_num_batched_tokens", "max_num_seqs", "flashinfer_sampler")
    }
    params.update(
        model_dir=str(REPO_ROOT / "tests" / "unit" / "fixtures" / "models" / "Llama-3.1-70B-Instruct"),
        cluster=nodes,
        gpu_memory_utilization=0.9,
        kv_cache_dtype="auto",
        max_model_len=8192,
        vllm_version="0.32.0",
        tensor_parallel_size=sizes.get("tensor_parallel_size"),
        pipeline_parallel_size=sizes.get("pipeline_parallel_size"),
        data_parallel_size=sizes.get("data_parallel_size"),
    )

    def fail(**result):
        raise AssertionError(result)

    return run_plan(params, fail)["plan"]


def native_unit(tmp_path: Path, plan: dict, host: str) -> str:
    """The unit vllm_serve's configure.yml renders for HOST: its group's rank, nnodes and master."""
    role = node_role(plan, host)
    return render(
        tmp_path,
        {
            "vllm_serve_backend": "native",
            "vllm_serve_plan": plan,
            "__vllm_serve_role": role,
            "__vllm_serve_node_rank": role["node_rank"],
            "__vllm_serve_master_addr": NATIVE_ADDRESSES[role["master_host"]],
            "vllm_serve_node_environment": {"GLOO_SOCKET_IFNAME": "eth0", "VLLM_HOST_IP": NATIVE_ADDRESSES[host]},
            "vllm_serve_environment": {},
            "vllm_serve_extra_args": [],
            "vllm_serve_venv": "/opt/llmserve/venv",
            "vllm_serve_model_path": "/srv/models/Llama-3.1-70B-Instruct",
            "vllm_serve_served_model_name": "Llama-3.1-70B-Instruct",
            "vllm_serve_user": "llmserve",
            "vllm_serve_config_dir": "/etc/llmserve",
            "vllm_serve_host": NATIVE_ADDRESSES[host],
            "vllm_serve_port": 8000,
            "vllm_serve_master_port": 29555,
            "vllm_serve_restart_sec": 10,
            "vllm_serve_ray_gcs_port": 6379,
            "vllm_serve_ray_auth_token_path": "",
        },
    )


def test_a_single_replica_native_unit_is_the_one_rendered_before_serving_groups(tmp_path):
    # The golden file was rendered by the template as it was before serving groups, so a plan with one
    # replica must come out byte for byte the same: an upgraded collection rewrites no unit and restarts nothing.
    plan = native_plan([dict(node, gpus=4) for node in NODES], tensor_parallel_size=8)
    unit = native_unit(tmp_path, plan, "gpu-node-02")
    if os.environ.get("LLMSERVE_UPDATE_GOLDEN"):
        NATIVE_GOLDEN.write_text(unit)
    assert unit == NATIVE_GOLDEN.read_text()
    assert "--nnodes 2 \\\n    --node-rank 1 \\\n    --master-addr 10.20.0.11" in unit and "--headless" in unit


def test_each_node_of_two_single_node_replicas_serves_its_own_api(tmp_path):
    nodes = [dict(node, gpus=4) for node in NODES]
    plan = native_plan(nodes, tensor_parallel_size=4, data_parallel_size=2)
    unit = native_unit(tmp_path, plan, "gpu-node-02")
    assert "--nnodes 1 \\\n    --node-rank 0 \\\n    --master-addr 10.20.0.12" in unit
    assert "--host 10.20.0.12 \\\n    --port 8000" in unit and "--headless" not in unit
    assert "--data-parallel-size" not in unit


def test_replicas_sharing_a_node_are_one_server_with_vllm_data_parallel(tmp_path):
    plan = native_plan(NODES[:1], tensor_parallel_size=4, data_parallel_size=2)
    unit = native_unit(tmp_path, plan, "gpu-node-01")
    assert unit.count("--data-parallel-size 2") == 1
    assert "--tensor-parallel-size 4" in unit.replace("'", "") and "--nnodes 1" in unit
