# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""bench_report run by ansible-core itself on localhost, on real vllm bench serve results."""

from __future__ import annotations

import json
from pathlib import Path

from adhoc import run_module

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "bench"
RESULTS = [str(FIXTURES / f"vllm-0.32.0-cpu-tiny-llama-concurrency-{value}.json") for value in (2, 1)]


def test_writes_the_summary_and_the_plot_then_changes_nothing(tmp_path):
    arguments = {
        "result_files": RESULTS,
        "summary_path": str(tmp_path / "run" / "summary.json"),
        "plot_path": str(tmp_path / "run" / "throughput.png"),
        "title": "tiny-llama",
    }
    first = run_module("bench_report", arguments)
    assert not first["_failed"] and first["changed"], first
    assert [row["max_concurrency"] for row in first["rows"]] == [1, 2]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rows"] == first["rows"] and summary["title"] == "tiny-llama"
    assert (tmp_path / "run" / "throughput.png").read_bytes().startswith(b"\x89PNG")

    again = run_module("bench_report", arguments)
    assert not again["_failed"] and not again["changed"], "the same results make the same files"


def test_check_mode_writes_nothing(tmp_path):
    result = run_module(
        "bench_report", {"result_files": RESULTS, "summary_path": str(tmp_path / "summary.json")}, check=True
    )
    assert not result["_failed"] and not result["changed"]
    assert "| 2 | 4 | 0 |" in result["table"]
    assert not (tmp_path / "summary.json").exists()


def test_lost_requests_fail_with_the_table(tmp_path):
    lossy = json.loads(Path(RESULTS[0]).read_text())
    lossy["completed"], lossy["failed"] = 2, 2
    path = tmp_path / "concurrency-2.json"
    path.write_text(json.dumps(lossy))
    result = run_module("bench_report", {"result_files": [str(path)], "summary_path": str(tmp_path / "summary.json")})
    assert result["_failed"]
    assert "concurrency 2: 2 completed, 2 failed" in result["msg"] and "| concurrency |" in result["msg"]
    assert not (tmp_path / "summary.json").exists()


def test_an_unreadable_result_is_named(tmp_path):
    result = run_module(
        "bench_report", {"result_files": [str(tmp_path / "missing.json")], "summary_path": str(tmp_path / "s.json")}
    )
    assert result["_failed"] and "missing.json" in result["msg"]
