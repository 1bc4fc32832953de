# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""nccl_report run by ansible-core itself on localhost, on real NCCL logs (tests/unit/fixtures/nccl)."""

from __future__ import annotations

from pathlib import Path

from adhoc import run_module

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "nccl"
# Two nodes x 8 GPUs; seconds per all-reduce as the script reports them.
TIMINGS = [{"bytes": 268435456, "seconds": 0.0025}, {"bytes": 1048576, "seconds": 0.0001}]


def logs(**fixtures: str) -> dict:
    return {node: (FIXTURES / name).read_text(encoding="utf-8") for node, name in fixtures.items()}


def test_ib_with_gdrdma_passes_and_prints_bus_bandwidth():
    result = run_module(
        "nccl_report",
        {
            "logs": logs(gpu1="ib_gdrdma_nccl820.log", gpu2="ibext_gdrdma_nccl1453.log"),
            "timings": TIMINGS,
            "world_size": 16,
            "backend": "nccl",
            "rdma_nodes": ["gpu1", "gpu2"],
        },
    )
    assert not result["_failed"], result
    assert [row["bytes"] for row in result["bandwidth"]] == [1048576, 268435456]
    # 256 MiB in 2.5 ms is 107.374 GB/s algbw; times 2*15/16 for the bus.
    assert round(result["bandwidth"][1]["busbw_gbps"], 3) == round(268435456 / 0.0025 / 1e9 * 1.875, 3)
    assert "| 256 MiB | 2500.0 | 107.374 | 201.327 |" in result["table"]
    assert "gpu2: NCCL  over IBext_v8 (IB/RoCE present), GPUDirect RDMA on" in result["table"]
    assert result["transports"]["gpu1"]["networks"] == ["IB"]
    assert result["concerns"] == [] and result["failures"] == []


def test_socket_on_an_ib_node_fails_the_task():
    result = run_module(
        "nccl_report",
        {
            "logs": logs(gpu1="ib_gdrdma_nccl820.log", gpu2="socket_ib_disabled_on_ib_host_nccltests188.log"),
            "timings": TIMINGS,
            "world_size": 16,
            "backend": "nccl",
            "rdma_nodes": ["gpu1", "gpu2"],
        },
    )
    assert result["_failed"]
    assert "NCCL is not using the fast fabric" in result["msg"]
    assert "gpu2: NCCL used NET/Socket" in result["msg"] and "NCCL_IB_DISABLE=1" in result["msg"]
    assert "| 1 MiB |" in result["msg"], "the bandwidth table is shown with the failure"


def test_gdrdma_off_warns_but_passes():
    result = run_module(
        "nccl_report",
        {
            "logs": logs(gpu1="ib_no_gdrdma_module_nccl899.log", gpu2="ib_no_gdrdma_module_nccl899.log"),
            "timings": TIMINGS,
            "world_size": 16,
            "backend": "nccl",
            "rdma_nodes": ["gpu1", "gpu2"],
        },
    )
    assert not result["_failed"], result
    assert len(result["concerns"]) == 2 and all("GPUDirect RDMA is off" in line for line in result["concerns"])


def test_gloo_on_cpu_judges_no_transport():
    result = run_module(
        "nccl_report",
        {
            "logs": {"node1": "node1: ranks 0..0 of 2 (gloo)\n", "node2": "node2: ranks 1..1 of 2 (gloo)\n"},
            "timings": [{"bytes": 4096, "seconds": 0.0004}],
            "world_size": 2,
            "backend": "gloo",
        },
    )
    assert not result["_failed"], result
    assert result["transports"] == {} and result["table"].endswith("gloo on CPU: no NCCL transport to judge")


def test_unusable_timings_fail_with_the_reason():
    result = run_module(
        "nccl_report", {"logs": {}, "timings": [{"bytes": 4096, "seconds": 0}], "world_size": 2, "backend": "gloo"}
    )
    assert result["_failed"] and "unusable timings" in result["msg"]
