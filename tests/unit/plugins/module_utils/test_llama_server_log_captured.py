# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The planner's estimate against a real llama-server log captured on the sandbox (tiny Llama, 2 RPC workers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf_files import write_tiny_llama_f16

from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_model import read_gguf_model
from ansible_collections.llmserve.cluster.plugins.module_utils._gguf_planner import plan_gguf
from ansible_collections.llmserve.cluster.plugins.module_utils._llama_server_log import compare, parse_memory

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "llama_cpp"
LOG = (FIXTURES / "llama-server-tiny-2rpc.log").read_text()
PLAN = json.loads((FIXTURES / "plan-tiny-2rpc.json").read_text())


def test_the_log_names_each_rpc_worker_by_llama_device():
    memory = parse_memory(LOG)
    assert memory["RPC0"] == {"model_mib": 3.38, "kv_cache_mib": 3.0, "compute_mib": 14.04}
    assert memory["RPC1"] == {"model_mib": 1.38, "kv_cache_mib": 1.0, "compute_mib": 11.54}
    assert memory["Host"]["compute_mib"] == 10.55
    assert [device["llama_device"] for device in PLAN["devices"] if device["kind"] == "rpc"] == ["RPC0", "RPC1"]


def test_weights_and_kv_estimates_match_what_llama_server_allocated():
    comparison = compare(PLAN, parse_memory(LOG), tolerance=0.10)
    for device in ("RPC0", "RPC1", "Host"):
        assert comparison["devices"][device]["model_mib"]["within"]
        assert comparison["devices"][device]["kv_cache_mib"]["within"]


def test_compare_flags_a_compute_buffer_outside_the_tolerance():
    # The negative control for compare(): plan-tiny-2rpc.json was written by the first planner, which summed
    # live tensors, so its host compute buffer is 4x too small. The current planner is checked below.
    comparison = compare(PLAN, parse_memory(LOG), tolerance=0.10)
    host = comparison["devices"]["Host"]["compute_mib"]
    assert host["within"] is False and host["ratio"] == pytest.approx(10.55 / 2.5, rel=0.01)
    assert comparison["within"] is False


def test_todays_plan_for_the_sandbox_run_matches_every_buffer_llama_server_logged(tmp_path):
    model = read_gguf_model([str(write_tiny_llama_f16(tmp_path, tied_embeddings=False)[0])])
    devices = [
        {"name": device["name"], "node": device["node"], "kind": "rpc", "memory_free_mib": device["free_mib"]}
        for device in PLAN["devices"]
    ]
    plan = plan_gguf(model, devices, ctx_size=PLAN["ctx_size"], tensor_split=PLAN["tensor_split"])

    comparison = compare(plan, parse_memory(LOG), tolerance=0.10)
    assert comparison["within"] is True
    for device in ("RPC0", "RPC1", "Host"):
        compute = comparison["devices"][device]["compute_mib"]
        assert compute["ratio"] == pytest.approx(1.0, abs=0.10), (device, compute)
