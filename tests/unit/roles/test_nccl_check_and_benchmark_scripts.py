# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The scripts the nccl_check and endpoint_benchmark roles ship: rank layout, and the API key handed over
through the environment only (the all-reduce itself runs in tests/integration/test_nccl_check.py)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROLES = Path(__file__).resolve().parents[3] / "roles"
spec = importlib.util.spec_from_file_location(
    "llmserve_allreduce", ROLES / "nccl_check" / "files" / "llmserve_allreduce.py"
)
allreduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allreduce)
BENCH_LAUNCHER = ROLES / "endpoint_benchmark" / "files" / "llmserve_bench.py"


def test_gpu_nodes_get_one_rank_per_gpu_head_first():
    nodes, gpus = ["head", "gpu2", "gpu3"], [8, 8, 4]
    assert allreduce.layout(nodes, gpus, "head", "auto") == ("nccl", 20, 0, 8)
    assert allreduce.layout(nodes, gpus, "gpu2", "auto") == ("nccl", 20, 8, 8)
    assert allreduce.layout(nodes, gpus, "gpu3", "auto") == ("nccl", 20, 16, 4)


def test_cpu_nodes_run_gloo_with_one_process_each():
    assert allreduce.layout(["node1", "node2"], [0, 0], "node2", "auto") == ("gloo", 2, 1, 1)
    # gloo on GPU nodes too, when asked: still one process per node.
    assert allreduce.layout(["a", "b"], [8, 8], "b", "gloo") == ("gloo", 2, 1, 1)


def test_nccl_without_gpus_and_inconsistent_lists_are_refused():
    with pytest.raises(SystemExit, match="none on node2"):
        allreduce.layout(["node1", "node2"], [8, 0], "node1", "nccl")
    with pytest.raises(SystemExit, match="one count each"):
        allreduce.layout(["node1", "node2"], [8], "node1", "auto")
    with pytest.raises(SystemExit, match="not among"):
        allreduce.layout(["node1"], [8], "node9", "auto")


def test_the_api_key_reaches_the_command_through_the_environment_only(tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text("sk-sandbox-0123456789\n")
    probe = "import json, os, sys; print(json.dumps({'key': os.environ.get('OPENAI_API_KEY'), 'argv': sys.argv}))"
    completed = subprocess.run(
        [sys.executable, str(BENCH_LAUNCHER), "--api-key-file", str(key_file), "--", sys.executable, "-c", probe, "x"],
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(completed.stdout)
    assert seen["key"] == "sk-sandbox-0123456789"
    assert all("sk-sandbox" not in argument for argument in seen["argv"])


def test_an_empty_key_file_stops_before_the_benchmark(tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text("\n")
    completed = subprocess.run(
        [sys.executable, str(BENCH_LAUNCHER), "--api-key-file", str(key_file), "--", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode != 0 and "is empty" in completed.stderr
