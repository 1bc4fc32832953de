# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Rows, table and plot from real `vllm bench serve --save-result` files (tests/unit/fixtures/bench)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.llmserve.cluster.plugins.module_utils._bench_results import (
    BenchResultError,
    plot_throughput,
    problems,
    results_table,
    summarize,
    summarize_all,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "bench"


def result(concurrency: int) -> dict:
    return json.loads((FIXTURES / f"vllm-0.32.0-cpu-tiny-llama-concurrency-{concurrency}.json").read_text())


def test_a_row_takes_vllms_own_numbers():
    raw = result(2)
    row = summarize(raw)
    assert row["max_concurrency"] == 2 and row["completed"] == 4 and row["failed"] == 0
    assert row["request_throughput"] == raw["request_throughput"]
    assert row["output_throughput"] == raw["output_throughput"]
    assert row["ttft_p50_ms"] == raw["p50_ttft_ms"] and row["ttft_p99_ms"] == raw["p99_ttft_ms"]
    assert row["itl_p50_ms"] == raw["p50_itl_ms"] and row["itl_p99_ms"] == raw["p99_itl_ms"]
    assert row["ttft_p50_ms"] <= row["ttft_p99_ms"]


def test_rows_are_sorted_by_concurrency_and_tabulated():
    rows = summarize_all([result(2), result(1)])
    assert [row["max_concurrency"] for row in rows] == [1, 2]
    table = results_table(rows, "tiny-llama").splitlines()
    assert table[0] == "tiny-llama"
    assert table[1].startswith("| concurrency | completed | failed | req/s | output tok/s | TTFT p50 (ms) |")
    assert table[3].startswith("| 1 | 8 | 0 | ") and table[4].startswith("| 2 | 4 | 0 | ")
    assert problems(rows) == []


def test_without_the_p99_percentile_the_reason_is_named():
    raw = result(1)
    for key in [key for key in raw if key.startswith("p99_")]:
        del raw[key]
    with pytest.raises(BenchResultError, match="--metric-percentiles 50,99"):
        summarize(raw)


def test_median_stands_in_for_p50():
    raw = result(1)
    del raw["p50_ttft_ms"], raw["p50_itl_ms"]
    row = summarize(raw)
    assert row["ttft_p50_ms"] == raw["median_ttft_ms"] and row["itl_p50_ms"] == raw["median_itl_ms"]


def test_a_result_without_max_concurrency_or_a_repeated_one_is_refused():
    raw = result(1)
    raw["max_concurrency"] = None
    with pytest.raises(BenchResultError, match="--max-concurrency"):
        summarize(raw)
    with pytest.raises(BenchResultError, match=r"concurrency \[1\]"):
        summarize_all([result(1), result(1)])


def test_lost_requests_are_problems():
    raw = result(2)
    raw["completed"], raw["failed"] = 3, 1
    assert problems([summarize(raw)]) == ["concurrency 2: 3 completed, 1 failed"]


def test_plot_is_a_png():
    image = plot_throughput(summarize_all([result(1), result(2)]), "tiny-llama")
    assert image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 5000
