# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from ansible.errors import AnsibleActionFail
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args
from ansible.parsing.dataloader import DataLoader
from ansible.playbook.play_context import PlayContext
from ansible.playbook.task import Task
from ansible.plugins.loader import connection_loader
from ansible.template import Templar
from hub_fixture_server import HubFixture

from ansible_collections.llmserve.cluster.plugins.action.parallel_plan import ActionModule
from ansible_collections.llmserve.cluster.plugins.module_utils._model_spec import (
    hub_file_fetcher,
    hub_parameter_counter,
    load_model_spec_from_hub,
)
from ansible_collections.llmserve.cluster.plugins.modules import gpu_facts, parallel_plan

MODELS = Path(__file__).resolve().parents[2] / "fixtures" / "models"
A10_NODES = [
    {"name": "pod1", "gpus": 1, "gpu_memory_mib": 23028, "gpu_name": "NVIDIA A10"},
    {"name": "pod2", "gpus": 1, "gpu_memory_mib": 23028, "gpu_name": "NVIDIA A10"},
]


def run_module(capsys, args):
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        parallel_plan.main()
    return exited.value.code, json.loads(capsys.readouterr().out)


def test_module_plans_a_given_cluster(capsys):
    rc, result = run_module(capsys, {"model_dir": str(MODELS / "Qwen-14B-Chat"), "cluster": A10_NODES})
    assert rc == 0 and result["changed"] is False
    plan = result["plan"]
    assert (plan["strategy"], plan["tensor_parallel_size"], plan["pipeline_parallel_size"]) == (
        "pipeline_parallel",
        1,
        2,
    )
    assert [node["name"] for node in plan["nodes"]] == ["pod1", "pod2"]
    assert plan["per_gpu"]["kv_cache_bytes"] > 0
    assert plan["vllm_args"][:4] == ["--tensor-parallel-size", "1", "--pipeline-parallel-size", "2"]
    assert "| pipeline_parallel |" in plan["table"]


def test_module_needs_the_cluster_without_its_action(capsys):
    rc, result = run_module(capsys, {"model_dir": str(MODELS / "Qwen-14B-Chat")})
    assert rc == 1 and result["failed"]
    assert result["msg"].startswith("cluster:")


def test_module_names_the_field_vllm_would_reject(capsys):
    rc, result = run_module(
        capsys, {"model_dir": str(MODELS / "Qwen-14B-Chat"), "cluster": A10_NODES, "tensor_parallel_size": 3}
    )
    assert rc == 1
    assert result["field"] == "tensor_parallel_size"
    assert "num_attention_heads (40) must be divisible by tensor_parallel_size (3)" in result["msg"]


def test_module_says_what_would_fit(capsys):
    rc, result = run_module(
        capsys,
        {
            "model_dir": str(MODELS / "Qwen2.5-72B-Instruct"),
            "cluster": [
                {"name": "p40-1", "gpus": 1, "gpu_memory_mib": 22919, "gpu_name": "Tesla P40"},
                {"name": "p40-2", "gpus": 1, "gpu_memory_mib": 22919, "gpu_name": "Tesla P40"},
            ],
        },
    )
    assert rc == 1
    assert "does not fit" in result["msg"] and "bfloat16" in result["msg"]
    assert result["suggestions"] and "more nodes of 1x Tesla P40" in result["suggestions"][0]


@pytest.mark.parametrize(
    "args, field, text",
    [
        ({"gpu_memory_utilization": 1.2}, "gpu_memory_utilization", "(0, 1]"),
        ({"max_model_len": 4096}, "max_model_len", "above Qwen-14B-Chat's maximum of 2048"),
        ({"pipeline_parallel_size": 41}, "pipeline_parallel_size", "larger than the model's 40 layers"),
    ],
)
def test_module_bad_input(capsys, args, field, text):
    rc, result = run_module(capsys, {"model_dir": str(MODELS / "Qwen-14B-Chat"), "cluster": A10_NODES, **args})
    assert rc == 1
    assert result["field"] == field
    assert text in result["msg"]


def test_module_model_dir_without_config(capsys, tmp_path):
    rc, result = run_module(capsys, {"model_dir": str(tmp_path), "cluster": A10_NODES})
    assert rc == 1 and result["field"] == "model_dir"
    assert "has no config.json" in result["msg"]


def test_module_takes_model_dir_or_model_not_both(capsys):
    rc, result = run_module(
        capsys, {"model_dir": str(MODELS / "Qwen3-8B"), "model": "Qwen/Qwen3-8B", "cluster": A10_NODES}
    )
    assert rc == 1
    assert "mutually exclusive" in result["msg"]


# --- the action plugin, on the controller ---------------------------------------------------------------


def gpu_facts_of(capture, monkeypatch, capsys, nvml_replay):
    """What gpu_facts returns for a captured NVML session (fabric manager tools absent)."""
    monkeypatch.setattr(gpu_facts, "pynvml", nvml_replay(capture))
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda self, name, required=False, opt_dirs=None: None)
    with patch_module_args({}), pytest.raises(SystemExit):
        gpu_facts.main()
    return json.loads(capsys.readouterr().out)["ansible_facts"]


def run_action(args, task_vars):
    task = Task()
    task.args = args
    loader = DataLoader()
    context = PlayContext()
    connection = connection_loader.get("local", context, None)
    action = ActionModule(task, connection, context, loader, Templar(loader=loader), None)
    return action.run(task_vars=task_vars)


def play_vars(facts_by_host):
    return {
        "ansible_play_hosts": list(facts_by_host),
        "hostvars": {host: {"ansible_facts": facts} for host, facts in facts_by_host.items()},
    }


def test_action_builds_the_cluster_from_gpu_facts(monkeypatch, capsys, nvml_replay):
    h100 = gpu_facts_of("h100_sxm_8x.json", monkeypatch, capsys, nvml_replay)
    result = run_action({"model_dir": str(MODELS / "DeepSeek-R1")}, play_vars({"head": h100, "worker": h100}))
    assert not result.get("failed"), result.get("msg")
    plan = result["plan"]
    assert (plan["strategy"], plan["tensor_parallel_size"], plan["pipeline_parallel_size"]) == (
        "tensor_pipeline_parallel",
        8,
        2,
    )
    assert [(node["name"], node["gpus_used"], node["first_rank"]) for node in plan["nodes"]] == [
        ("head", 8, 0),
        ("worker", 8, 8),
    ]
    assert plan["nodes"][0]["gpu_memory_mib"] == h100["llmserve_gpu"]["gpus"][0]["memory_total_mib"]


def test_action_refuses_hosts_without_gpus(monkeypatch, capsys, nvml_replay):
    a10 = gpu_facts_of("a10_1x.json", monkeypatch, capsys, nvml_replay)
    bare = gpu_facts_of("no_library.json", monkeypatch, capsys, nvml_replay)
    result = run_action({"model_dir": str(MODELS / "Qwen-14B-Chat")}, play_vars({"gpu1": a10, "login": bare}))
    assert result["failed"] and result["field"] == "cluster"
    assert "login has no usable GPU" in result["msg"]


def test_action_plans_a_hypothetical_cluster_without_facts():
    result = run_action({"model_dir": str(MODELS / "Qwen-14B-Chat"), "cluster": A10_NODES}, play_vars({}))
    assert result["plan"]["kv_cache_tokens"] >= 2048
    assert result["changed"] is False


def test_action_validates_arguments_like_the_module():
    with pytest.raises(AnsibleActionFail, match="gpus"):
        run_action(
            {
                "model_dir": str(MODELS / "Qwen-14B-Chat"),
                "cluster": [{"name": "n", "gpus": "eight", "gpu_memory_mib": 23028}],
            },
            play_vars({}),
        )


def test_action_reports_no_fit_with_suggestions():
    result = run_action(
        {
            "model_dir": str(MODELS / "DeepSeek-R1-BF16"),
            "cluster": [
                {"name": "h1", "gpus": 8, "gpu_memory_mib": 81559, "gpu_name": "NVIDIA H100 80GB HBM3"},
                {"name": "h2", "gpus": 8, "gpu_memory_mib": 81559, "gpu_name": "NVIDIA H100 80GB HBM3"},
            ],
        },
        play_vars({}),
    )
    assert result["failed"]
    assert any("pipeline_parallel_size 3" in suggestion for suggestion in result["suggestions"])


def test_action_uses_node_devices_for_the_cpu_sandbox(monkeypatch, capsys, nvml_replay, tmp_path):
    # The sandbox: a tiny random Llama (hidden 256, 4 heads of 64, 2 KV heads, 4 layers, vocab 512) on two hosts
    # without GPUs, each described as one CPU device whose memory is its KV cache space; TP 2 across them.
    bare = gpu_facts_of("no_library.json", monkeypatch, capsys, nvml_replay)
    task_vars = play_vars({"node-b": bare, "node-a": bare})
    for host in ("node-a", "node-b"):
        task_vars["hostvars"][host]["llmserve_node_devices"] = {"gpus": 1, "gpu_memory_mib": 1024, "gpu_name": "cpu"}
    result = run_action(
        {"model_dir": str(MODELS / "tiny-llama"), "tensor_parallel_size": 2, "head": "node-a", "max_model_len": 256},
        task_vars,
    )
    assert not result.get("failed"), result.get("msg")
    plan = result["plan"]
    assert [node["name"] for node in plan["nodes"]] == ["node-a", "node-b"]
    assert (plan["tensor_parallel_size"], plan["pipeline_parallel_size"]) == (2, 1)
    assert plan["env"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert any("spans nodes node-a, node-b" in warning for warning in plan["warnings"])


def test_head_must_be_a_node_of_the_cluster(capsys):
    rc, result = run_module(
        capsys, {"model_dir": str(MODELS / "Qwen-14B-Chat"), "cluster": A10_NODES, "head": "nowhere"}
    )
    assert rc == 1 and result["field"] == "head"
    rc, result = run_module(capsys, {"model_dir": str(MODELS / "Qwen-14B-Chat"), "cluster": A10_NODES, "head": "pod2"})
    assert [node["name"] for node in result["plan"]["nodes"]] == ["pod2", "pod1"]


# --- the Hub path, with the real huggingface_hub against a local stand-in of the Hub ---------------------


def test_model_from_the_hub_reads_config_and_index_without_weights(tmp_path):
    with HubFixture(str(MODELS / "Qwen3-8B"), repo_id="Qwen/Qwen3-8B") as hub:
        spec = load_model_spec_from_hub(
            "Qwen/Qwen3-8B",
            hub.commit,
            fetch_file=hub_file_fetcher("Qwen/Qwen3-8B", hub.commit, hub.endpoint, str(tmp_path)),
            fetch_parameter_count=hub_parameter_counter("Qwen/Qwen3-8B", hub.commit, hub.endpoint),
        )
        fetched = {str(request["path"]).rsplit("/", 1)[-1] for request in hub.state.requests}
    assert spec.weights_bytes == 16_381_470_720 and spec.num_layers == 36
    assert {"config.json", "model.safetensors.index.json"} <= fetched
    assert not any(name.endswith(".safetensors") for name in fetched)


def test_model_from_the_hub_without_index_reads_the_safetensors_header(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(MODELS / "Qwen2.5-0.5B-Instruct" / "config.json", repo / "config.json")
    # huggingface_hub asks for the first 100,001 bytes; a real checkpoint has its tensor data after the header,
    # so give this header-only copy the same room (zeros stand in for the data).
    header = (MODELS / "Qwen2.5-0.5B-Instruct" / "model.safetensors").read_bytes()
    (repo / "model.safetensors").write_bytes(header + bytes(128 * 1024))
    with HubFixture(str(repo), repo_id="Qwen/Qwen2.5-0.5B-Instruct") as hub:
        spec = load_model_spec_from_hub(
            "Qwen/Qwen2.5-0.5B-Instruct",
            hub.commit,
            fetch_file=hub_file_fetcher("Qwen/Qwen2.5-0.5B-Instruct", hub.commit, hub.endpoint, str(tmp_path / "c")),
            fetch_parameter_count=hub_parameter_counter("Qwen/Qwen2.5-0.5B-Instruct", hub.commit, hub.endpoint),
        )
    assert spec.weights_bytes == 988_065_536
    assert spec.weights_source == "safetensors metadata on the Hub"


def test_module_max_model_len_above_what_fits(capsys):
    rc, result = run_module(
        capsys,
        {
            "model_dir": str(MODELS / "Llama-3.1-8B-Instruct"),
            "cluster": [{"name": "desk", "gpus": 1, "gpu_memory_mib": 24564, "gpu_name": "NVIDIA GeForce RTX 4090"}],
        },
    )
    assert rc == 1 and result["field"] == "max_model_len"
    assert "fewer than one request of max_model_len 131,072" in result["msg"]
    assert any(suggestion.startswith("max_model_len ") for suggestion in result["suggestions"])


def test_a_decommissioned_node_leaves_the_plan(capsys):
    three = [*A10_NODES, {"name": "pod3", "gpus": 1, "gpu_memory_mib": 23028, "gpu_name": "NVIDIA A10"}]
    args = {"model_dir": str(MODELS / "Qwen-14B-Chat"), "cluster": three, "head": "pod1"}
    rc, result = run_module(capsys, dict(args, exclude_nodes=["pod2"]))
    assert rc == 0
    assert [node["name"] for node in result["plan"]["nodes"]] == ["pod1", "pod3"]


def test_the_head_cannot_be_decommissioned(capsys):
    args = {"model_dir": str(MODELS / "Qwen-14B-Chat"), "cluster": A10_NODES, "head": "pod1"}
    rc, result = run_module(capsys, dict(args, exclude_nodes=["pod1"]))
    assert rc == 1 and result["failed"] is True
    assert result["field"] == "exclude_nodes"
    assert "pod1 is the head" in result["msg"] and "ray_head" in result["msg"]


def test_decommissioning_below_what_the_model_needs_says_what_would_fit(capsys):
    args = {"model_dir": str(MODELS / "Qwen-14B-Chat"), "cluster": A10_NODES, "head": "pod1"}
    rc, result = run_module(capsys, dict(args, exclude_nodes=["pod2"]))
    assert rc == 1
    assert "does not fit on 1 node" in result["msg"]
