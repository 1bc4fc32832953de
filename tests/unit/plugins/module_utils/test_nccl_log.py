# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The NCCL transport decision on real NCCL_DEBUG=INFO logs (tests/unit/fixtures/nccl, each citing its source)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._nccl_log import judge, read_nccl_log

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "nccl"


def log(name: str) -> str:
    text = (FIXTURES / name).read_text(encoding="utf-8")
    assert text.startswith("# Source: https://github.com/"), f"{name} must cite where its lines come from"
    return text


@pytest.mark.parametrize(
    ("fixture", "networks", "gdrdma"),
    [
        ("ib_gdrdma_nccl820.log", ["IB"], "on"),
        ("ibext_gdrdma_nccl1453.log", ["IBext_v8"], "on"),
        ("ib_no_gdrdma_module_nccl899.log", ["IB"], "off"),
        ("roce_gdr_disabled_nccl1537.log", ["IB"], "off"),
        ("ibext_roce_no_gdrdma_nccltests373.log", ["IBext_v8"], "off"),
        ("old_nccl_socket_and_ib_listed_nvpeermem56.log", ["IB"], "unknown"),
        ("socket_ib_disabled_on_ib_host_nccltests188.log", ["Socket"], None),
        ("socket_no_ib_device_pytorch124380.log", ["Socket"], None),
        ("socket_no_ib_single_node_vllm6370.log", ["Socket"], None),
    ],
)
def test_transport_and_gpudirect_read_from_real_logs(fixture, networks, gdrdma):
    summary = read_nccl_log(log(fixture))
    assert summary.networks == networks
    assert summary.gdrdma == gdrdma
    assert summary.evidence and "NCCL INFO" in summary.evidence


def test_old_nccl_listing_its_socket_interfaces_still_counts_as_ib():
    # NCCL 2.4 prints "NET/Socket : Using [0]ib0" before "NET/IB : Using [0]mlx5_0:1/IB".
    summary = read_nccl_log(log("old_nccl_socket_and_ib_listed_nvpeermem56.log"))
    assert summary.nccl_version == "2.4.7"
    assert summary.ib_devices == ["mlx5_0:1"]
    assert not summary.uses_socket
    assert "NET/IB : Using [0]mlx5_0:1/IB" in summary.evidence


def test_channel_lines_count_gdrdma_and_plain_ib_channels():
    with_gdr = read_nccl_log(log("ib_gdrdma_nccl820.log"))
    assert (with_gdr.net_channels, with_gdr.gdrdma_channels) == (2, 2)
    without = read_nccl_log(log("ib_no_gdrdma_module_nccl899.log"))
    assert without.net_channels == 11 and without.gdrdma_channels == 0
    assert without.gdrdma_disabled == [f"HCA {index} 'mlx5_{index}' (no module)" for index in (1, 2, 3)]


def test_roce_devices_and_announced_network():
    summary = read_nccl_log(log("ibext_roce_no_gdrdma_nccltests373.log"))
    assert summary.ib_devices == ["mlx5_2:1", "mlx5_3:1", "mlx5_0:1", "mlx5_1:1"]
    assert summary.evidence.endswith("Using network IBext_v8")


def test_gdr_disabled_by_pci_distance_is_read_without_the_net_ib_prefix():
    summary = read_nccl_log(log("gdr_disabled_distance_nccl1657.log"))
    assert summary.gdrdma_disabled == ["GPU 42000 / HCA 0 (distance 6 > 4)"]
    # No transport named in this excerpt: nothing to call socket or IB.
    assert summary.networks == [] and summary.gdrdma is None


def test_socket_on_a_node_with_ib_fails_and_names_the_reason():
    summaries = {
        "gpu1": read_nccl_log(log("socket_ib_disabled_on_ib_host_nccltests188.log")),
        "gpu2": read_nccl_log(log("socket_no_ib_device_pytorch124380.log")),
    }
    verdict = judge(summaries, rdma_nodes=["gpu1", "gpu2"])
    assert len(verdict.failures) == 2
    assert "gpu1" in verdict.failures[0] and "NCCL_IB_DISABLE=1" in verdict.failures[0]
    assert "Using network Socket" in verdict.failures[0]
    assert "gpu2" in verdict.failures[1] and "no usable IB device" in verdict.failures[1]


def test_socket_on_nodes_without_ib_passes():
    summaries = {"cpu1": read_nccl_log(log("socket_no_ib_single_node_vllm6370.log"))}
    verdict = judge(summaries, rdma_nodes=[])
    assert verdict.failures == [] and verdict.warnings == []


def test_one_node_on_socket_fails_even_when_the_other_uses_ib():
    summaries = {
        "gpu1": read_nccl_log(log("ib_gdrdma_nccl820.log")),
        "gpu2": read_nccl_log(log("socket_no_ib_device_pytorch124380.log")),
    }
    verdict = judge(summaries, rdma_nodes=["gpu1", "gpu2"])
    assert [failure.split(":")[0] for failure in verdict.failures] == ["gpu2"]
    assert verdict.warnings == []


def test_ib_with_gdrdma_passes_silently():
    for fixture in ("ib_gdrdma_nccl820.log", "ibext_gdrdma_nccl1453.log"):
        verdict = judge({"gpu1": read_nccl_log(log(fixture))}, rdma_nodes=["gpu1"])
        assert verdict.failures == [] and verdict.warnings == [], fixture


def test_ib_without_gdrdma_warns_with_nccls_reason():
    verdict = judge({"gpu1": read_nccl_log(log("ib_no_gdrdma_module_nccl899.log"))}, rdma_nodes=["gpu1"])
    assert verdict.failures == []
    assert len(verdict.warnings) == 1
    assert "GPUDirect RDMA is off" in verdict.warnings[0] and "(no module)" in verdict.warnings[0]
    assert "nvidia_peermem" in verdict.warnings[0]

    roce = judge({"gpu1": read_nccl_log(log("ibext_roce_no_gdrdma_nccltests373.log"))}, rdma_nodes=["gpu1"])
    assert roce.failures == [] and "no channel uses GDRDMA" in roce.warnings[0]


def test_ib_with_unknown_gdrdma_warns():
    verdict = judge({"gpu1": read_nccl_log(log("old_nccl_socket_and_ib_listed_nvpeermem56.log"))}, rdma_nodes=["gpu1"])
    assert verdict.failures == []
    assert "does not say whether GPUDirect RDMA is on" in verdict.warnings[0]


def test_a_log_without_transport_lines_on_an_ib_cluster_warns():
    verdict = judge({"gpu1": read_nccl_log(log("gdr_disabled_distance_nccl1657.log"))}, rdma_nodes=["gpu1"])
    assert verdict.failures == []
    assert "names no network transport" in verdict.warnings[0]


def test_ray_prefixes_and_colour_codes_do_not_hide_the_network():
    # vLLM workers under Ray prefix every line, with terminal colours, as vllm#5405 shows.
    line = (
        "\x1b[36m(RayWorkerVllm pid=4095)\x1b[0m host:4095:4095 [1] NCCL INFO Using network Socket\n"
        "ESC[36m(RayWorkerVllm pid=4095)ESC[0m host:4095:4095 [1] NCCL INFO NET/IB : No device found.\n"
    )
    summary = read_nccl_log(line)
    assert summary.networks == ["Socket"] and summary.ib_not_found
