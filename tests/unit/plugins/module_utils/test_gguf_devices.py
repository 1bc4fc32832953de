# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""llama-server's devices from each node's facts (the llmserve_gpu fact as gpu_facts reports it from captured
NVML sessions, llmserve_node_devices, free RAM), and the GGUF file the planner and llama-server read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_devices import (
    cluster_devices,
    model_dir_entry_file,
    node_devices,
)
from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_model import GGUFModelError, entry_file
from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_planner import GGUFPlanError
from ansible_collections.llmserve.cluster.plugins.module_utils._gpu_probe import probe_gpus

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
SANDBOX_DEVICES = {"gpus": 1, "gpu_memory_mib": 1024, "gpu_name": "cpu"}


def offer(name, gpu, described=None, free_ram=13730, address="10.77.2.11"):
    return {
        "name": name,
        "gpu": gpu,
        "described": described or {},
        "memory_free_mib": free_ram,
        "rpc_endpoint": f"{address}:50052",
    }


def test_the_sandbox_gives_the_devices_its_captured_plan_was_made_for(nvml_replay):
    """Three CPU hosts without NVML, the workers described as one 1 GiB device: the plan-tiny-2rpc.json run."""
    no_gpu = probe_gpus(nvml_replay("no_library.json"))
    nodes = [
        offer("node2", no_gpu, SANDBOX_DEVICES, address="10.77.2.12"),
        offer("node3", no_gpu, SANDBOX_DEVICES, address="10.77.2.13"),
        offer("node1", no_gpu, SANDBOX_DEVICES, free_ram=13730),
    ]
    devices = cluster_devices(nodes, "node1")
    captured = json.loads((FIXTURES / "llama_cpp" / "plan-tiny-2rpc.json").read_text())
    assert [(d["name"], d["node"], d["kind"], d["memory_free_mib"]) for d in devices[:2]] == [
        (d["name"], d["node"], d["kind"], d["free_mib"]) for d in captured["devices"]
    ]
    assert devices[2] == {
        "name": "CPU",
        "node": "node1",
        "kind": "cpu",
        "memory_free_mib": captured["head"]["free_mib"],
    }


def test_a_worker_lends_every_gpu_nvml_sees_and_the_head_serves_its_own(nvml_replay):
    h100 = probe_gpus(nvml_replay("h100_sxm_8x.json"))
    a10 = probe_gpus(nvml_replay("a10_1x.json", strings_as_bytes=True))
    devices = cluster_devices([offer("head", a10, free_ram=50000), offer("worker", h100, address="10.0.0.12")], "head")
    rpc = [device for device in devices if device["kind"] == "rpc"]
    assert [device["name"] for device in rpc] == [f"RPC{index}[10.0.0.12:50052]" for index in range(8)]
    assert [device["memory_free_mib"] for device in rpc] == [card["memory_free_mib"] for card in h100["gpus"]]
    assert devices[8:] == [
        {"name": "CUDA0", "node": "head", "kind": "gpu", "memory_free_mib": a10["gpus"][0]["memory_free_mib"]},
        {"name": "CPU", "node": "head", "kind": "cpu", "memory_free_mib": 50000},
    ]


def test_a_worker_without_nvml_or_described_devices_lends_its_ram(nvml_replay):
    no_gpu = probe_gpus(nvml_replay("no_library.json"))
    assert node_devices(offer("worker", no_gpu, free_ram=6000, address="10.0.0.13"), is_head=False) == [
        {"name": "RPC0[10.0.0.13:50052]", "node": "worker", "kind": "rpc", "memory_free_mib": 6000}
    ]
    # The head's described devices are not GPUs llama-server can use: only its RAM serves.
    assert node_devices(offer("head", no_gpu, SANDBOX_DEVICES, free_ram=6000), is_head=True) == [
        {"name": "CPU", "node": "head", "kind": "cpu", "memory_free_mib": 6000}
    ]


def test_workers_keep_the_order_given_and_the_head_comes_last(nvml_replay):
    no_gpu = probe_gpus(nvml_replay("no_library.json"))
    nodes = [
        offer("node1", no_gpu),
        offer("node3", no_gpu, address="10.0.0.3"),
        offer("node2", no_gpu, address="10.0.0.2"),
    ]
    assert [device["node"] for device in cluster_devices(nodes, "node1")] == ["node3", "node2", "node1"]
    with pytest.raises(GGUFPlanError, match="the head node9 is not among the nodes"):
        cluster_devices(nodes, "node9")


@pytest.mark.parametrize(
    ("files", "chosen"),
    [
        (["/m/model.gguf"], "/m/model.gguf"),
        (
            ["/m/q-00002-of-00003.gguf", "/m/q-00001-of-00003.gguf", "/m/q-00003-of-00003.gguf"],
            "/m/q-00001-of-00003.gguf",
        ),
        # A split model wins over one unsplit file beside it.
        (["/m/q-00001-of-00002.gguf", "/m/q-00002-of-00002.gguf", "/m/mmproj.gguf"], "/m/q-00001-of-00002.gguf"),
        (["/m/a.gguf", "/m/b.gguf"], ""),
        (["/m/a-00001-of-00002.gguf", "/m/b-00001-of-00002.gguf"], ""),
        ([], ""),
        (["/m/README.md"], ""),
    ],
)
def test_the_entry_file_is_the_first_split_or_the_only_model(files, chosen):
    assert entry_file(files) == chosen


def test_a_model_directory_names_the_file_to_plan_or_says_what_to_set(tmp_path):
    for name in ("tiny-00001-of-00002.gguf", "tiny-00002-of-00002.gguf"):
        (tmp_path / name).write_bytes(b"")
    assert model_dir_entry_file(str(tmp_path)) == str(tmp_path / "tiny-00001-of-00002.gguf")
    (tmp_path / "other-00001-of-00002.gguf").write_bytes(b"")
    with pytest.raises(GGUFModelError, match="several GGUF models") as several:
        model_dir_entry_file(str(tmp_path))
    assert several.value.field == "model_dir" and "llama_cpp_plan_model_files" in str(several.value)
    with pytest.raises(GGUFModelError, match=r"holds no \.gguf file"):
        model_dir_entry_file(str(tmp_path / "empty"))
