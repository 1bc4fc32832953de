# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Bus bandwidth of an all-reduce, checked against the numbers nccl-tests prints."""

from __future__ import annotations

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._allreduce_bandwidth import (
    allreduce_bus_factor,
    bandwidth_rows,
    bandwidth_table,
    human_bytes,
)


def test_bus_factor_is_two_n_minus_one_over_n():
    assert allreduce_bus_factor(1) == 0
    assert allreduce_bus_factor(2) == 1
    assert allreduce_bus_factor(8) == pytest.approx(1.75)
    assert allreduce_bus_factor(16) == pytest.approx(1.875)
    with pytest.raises(ValueError):
        allreduce_bus_factor(0)


def test_rows_match_nccl_tests_output():
    # all_reduce_perf on 2 ranks (NVIDIA/dgx-spark-playbooks#103, out of place):
    # "65536  16384  float  sum  -1  67.93  0.96  0.96" (time us, algbw GB/s, busbw GB/s).
    two_ranks = bandwidth_rows([{"bytes": 65536, "seconds": 67.93e-6}], world_size=2)[0]
    assert round(two_ranks["algbw_gbps"], 2) == 0.96 and round(two_ranks["busbw_gbps"], 2) == 0.96
    # A line from kvcache-ai/Mooncake#3484, whose busbw/algbw ratio of 1.75 is 8 ranks:
    # "33554432  8388608  float  sum  -1  195.40  171.72  300.51".
    eight_ranks = bandwidth_rows([{"bytes": 33554432, "seconds": 195.40e-6}], world_size=8)[0]
    assert round(eight_ranks["algbw_gbps"], 2) == 171.72
    assert round(eight_ranks["busbw_gbps"], 2) == 300.51
    assert eight_ranks["time_us"] == pytest.approx(195.40)


def test_rows_are_sorted_by_size_and_zero_time_is_refused():
    rows = bandwidth_rows([{"bytes": 16 << 20, "seconds": 0.01}, {"bytes": 1 << 20, "seconds": 0.001}], world_size=2)
    assert [row["bytes"] for row in rows] == [1 << 20, 16 << 20]
    assert rows[0]["busbw_gbps"] == rows[0]["algbw_gbps"]
    with pytest.raises(ValueError):
        bandwidth_rows([{"bytes": 4096, "seconds": 0}], world_size=2)


def test_table_shows_one_line_per_size():
    rows = bandwidth_rows([{"bytes": 4096, "seconds": 0.0005}, {"bytes": 1 << 20, "seconds": 0.002}], world_size=2)
    table = bandwidth_table(rows, 2, "gloo").splitlines()
    assert table[0] == "all-reduce over 2 ranks (gloo); busbw = algbw * 2(n-1)/n"
    assert table[3] == "| 4 KiB | 500.0 | 0.008 | 0.008 |"
    assert table[4] == "| 1 MiB | 2000.0 | 0.524 | 0.524 |"
    assert human_bytes(1000) == "1000 B" and human_bytes(3 << 30) == "3 GiB"
