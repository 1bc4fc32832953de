# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args
from gguf_files import write_qwen25_72b_q2_k

from ansible_collections.llmserve.cluster.plugins.modules import gguf_plan

P40 = 22000


@pytest.fixture(scope="module")
def qwen_files(tmp_path_factory):
    return write_qwen25_72b_q2_k(tmp_path_factory.mktemp("qwen"))


def run_module(capsys, args):
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        gguf_plan.main()
    return exited.value.code, json.loads(capsys.readouterr().out)


def seed_devices(nodes):
    devices = [{"name": "head GPU 0", "node": "node1", "kind": "gpu", "memory_free_mib": P40}]
    if nodes == 2:
        devices.append({"name": "10.0.0.12:50052", "node": "node2", "kind": "rpc", "memory_free_mib": P40})
    return devices


def test_two_p40_nodes_get_flags_that_fit(capsys, qwen_files):
    rc, result = run_module(capsys, {"model_files": [str(qwen_files[0])], "devices": seed_devices(2), "ctx_size": 8192})

    assert rc == 0 and result["changed"] is False
    plan = result["plan"]
    assert plan["fits"] is True
    assert (plan["n_gpu_layers"], plan["tensor_split_arg"]) == (81, "41,40")
    assert [device["llama_device"] for device in plan["devices"]] == ["RPC0", "CUDA0"]
    assert plan["model"]["block_count"] == 80 and len(plan["model"]["files"]) == 7
    assert "LAYERS (I + T + O)" in plan["table"]


def test_one_p40_fails_naming_devices_and_what_would_fit(capsys, qwen_files):
    rc, result = run_module(capsys, {"model_files": [str(qwen_files[0])], "devices": seed_devices(1), "ctx_size": 8192})

    assert rc == 1 and result["failed"] is True
    assert result["field"] == "devices"
    assert result["msg"].startswith("devices: Does not fit")
    assert "1 more device(s)" in result["msg"] and "allow_no_fit" in result["msg"]
    assert result["plan"]["fits"] is False


def test_allow_no_fit_returns_the_plan(capsys, qwen_files):
    rc, result = run_module(
        capsys,
        {"model_files": [str(qwen_files[0])], "devices": seed_devices(1), "ctx_size": 8192, "allow_no_fit": True},
    )

    assert rc == 0
    assert result["plan"]["fits"] is False and "more device" in result["plan"]["advice"]


def test_a_tensor_split_that_overflows_is_blamed(capsys, qwen_files):
    rc, result = run_module(
        capsys,
        {
            "model_files": [str(qwen_files[0])],
            "devices": seed_devices(2),
            "ctx_size": 8192,
            "tensor_split": [1.0, 3.0],
        },
    )

    assert rc == 1 and result["field"] == "tensor_split"


def test_a_missing_split_fails_on_model_files(capsys, tmp_path):
    files = write_qwen25_72b_q2_k(tmp_path)
    files[6].unlink()

    rc, result = run_module(capsys, {"model_files": [str(files[0])], "devices": seed_devices(2)})

    assert rc == 1 and result["field"] == "model_files"
    assert files[6].name in result["msg"]


def test_nodes_facts_and_a_model_dir_plan_like_the_devices_they_describe(capsys, qwen_files):
    """The llama_cpp role passes each node's facts and llmserve_model_dir; the plan equals the one for devices."""
    _rc, by_devices = run_module(
        capsys,
        {
            "model_files": [str(qwen_files[0])],
            "devices": [
                {"name": "RPC0[10.0.0.12:50052]", "node": "node2", "kind": "rpc", "memory_free_mib": P40},
                {"name": "CUDA0", "node": "node1", "kind": "gpu", "memory_free_mib": P40},
                {"name": "CPU", "node": "node1", "kind": "cpu", "memory_free_mib": 64000},
            ],
            "ctx_size": 8192,
        },
    )
    p40 = {"available": True, "gpus": [{"index": 0, "memory_free_mib": P40, "compute_capability": "6.1"}]}
    rc, by_nodes = run_module(
        capsys,
        {
            "model_dir": str(qwen_files[0].parent),
            "nodes": [
                {"name": "node2", "gpu": p40, "memory_free_mib": 64000, "rpc_endpoint": "10.0.0.12:50052"},
                {"name": "node1", "gpu": p40, "memory_free_mib": 64000, "rpc_endpoint": "10.0.0.11:50052"},
            ],
            "head": "node1",
            "ctx_size": 8192,
        },
    )
    assert rc == 0, by_nodes
    assert by_nodes["plan"] == by_devices["plan"]


def test_nodes_without_the_head_name_the_option(capsys, qwen_files):
    rc, result = run_module(
        capsys,
        {
            "model_files": [str(qwen_files[0])],
            "nodes": [{"name": "node2", "memory_free_mib": 64000, "rpc_endpoint": "10.0.0.12:50052"}],
            "head": "node1",
        },
    )
    assert rc == 1 and result["field"] == "nodes"
    assert "the head node1 is not among the nodes" in result["msg"]
