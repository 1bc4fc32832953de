# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/benchmark.yml against the two-host CPU deployment: vllm bench serve at concurrency 1 and 2.

Tiny numbers, real pipeline: the installed vLLM's benchmark runs on the head with the API key from its
file, and the controller gets each raw result, a summary and a PNG plot.
"""

from __future__ import annotations

import json

import pytest

from .helpers import REPO_ROOT, ansible_playbook, ensure_native_cluster

BENCHMARK = REPO_ROOT / "playbooks" / "benchmark.yml"
pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def benchmark(sandbox_cli, tmp_path_factory):
    ensure_native_cluster(sandbox_cli)
    results_dir = tmp_path_factory.mktemp("benchmark")
    settings = {
        "endpoint_benchmark_concurrencies": [1, 2],
        "endpoint_benchmark_num_prompts": 8,
        "endpoint_benchmark_input_len": 16,
        "endpoint_benchmark_output_len": 8,
        "endpoint_benchmark_results_dir": str(results_dir),
    }
    run = ansible_playbook(BENCHMARK, "-e", json.dumps(settings), timeout=1800)
    return run, results_dir


def test_the_table_shows_every_concurrency(benchmark):
    run, _results_dir = benchmark
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "| concurrency | completed | failed | req/s | output tok/s | TTFT p50 (ms) | TTFT p99 (ms) |" in run.stdout
    assert "| 1 | 8 | 0 | " in run.stdout and "| 2 | 8 | 0 | " in run.stdout


def test_results_summary_and_plot_are_on_the_controller_with_positive_numbers(benchmark):
    run, results_dir = benchmark
    assert run.returncode == 0
    (run_dir,) = [path for path in results_dir.iterdir() if path.is_dir()]
    for concurrency in (1, 2):
        raw = json.loads((run_dir / f"concurrency-{concurrency}.json").read_text())
        assert raw["max_concurrency"] == concurrency and raw["completed"] == 8 and raw["failed"] == 0
        assert raw["total_output_tokens"] == 8 * 8, "--ignore-eos: every prompt generates exactly 8 tokens"
    rows = json.loads((run_dir / "summary.json").read_text())["rows"]
    assert [row["max_concurrency"] for row in rows] == [1, 2]
    for row in rows:
        for key in (
            "request_throughput",
            "output_throughput",
            "ttft_p50_ms",
            "ttft_p99_ms",
            "itl_p50_ms",
            "itl_p99_ms",
        ):
            assert row[key] > 0, (key, row)
        assert row["ttft_p50_ms"] <= row["ttft_p99_ms"] and row["itl_p50_ms"] <= row["itl_p99_ms"]
    assert (run_dir / "throughput.png").read_bytes().startswith(b"\x89PNG")


def test_the_api_key_never_shows_in_the_output(benchmark, sandbox_cli):
    run, _results_dir = benchmark
    api_key = sandbox_cli("exec", "node1", "--", "cat", "/etc/llmserve/api-key").stdout.strip()
    assert len(api_key) >= 32
    assert api_key not in run.stdout and api_key not in run.stderr
