"""Version skew across nodes, from the facts runtime_facts reports."""

from __future__ import annotations

import json
import subprocess
import sys

from ansible_collections.llmserve.cluster.plugins.module_utils._runtime_versions import (
    VERSION_PROBE_SCRIPT,
    find_version_skew,
)


def test_same_versions_everywhere_is_no_skew():
    versions = {"node1": {"ray": "2.60.0", "python": "3.11.2"}, "node2": {"ray": "2.60.0", "python": "3.11.2"}}
    assert find_version_skew(versions, ["ray", "python"]) == []


def test_skew_names_each_version_and_its_nodes():
    versions = {
        "node1": {"ray": "2.60.0", "vllm": "0.32.0"},
        "node2": {"ray": "2.59.0", "vllm": "0.32.0"},
        "node3": {"ray": "2.60.0", "vllm": None},
    }
    problems = find_version_skew(versions, ["ray", "vllm"])
    assert problems == [
        "ray differs across nodes (2.59.0 on node2; 2.60.0 on node1, node3). Every node must run the same ray: "
        "pin it in python_runtime_packages (or the wheelhouse) and re-run.",
        "vllm differs across nodes (0.32.0 on node1, node2; not installed on node3). Every node must run the same "
        "vllm: pin it in python_runtime_packages (or the wheelhouse) and re-run.",
    ]


def test_probe_script_reports_this_interpreter():
    """The probe runs for real here: Python is this one, absent packages are null."""
    output = subprocess.run([sys.executable, "-c", VERSION_PROBE_SCRIPT], capture_output=True, text=True, check=True)
    found = json.loads(output.stdout)
    assert found["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert found["vllm"] is None
    assert set(found) == {"python", "ray", "vllm", "torch", "llama_cpp"}
