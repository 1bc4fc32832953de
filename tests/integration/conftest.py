"""Integration tests run against the cluster-in-a-box (tests/sandbox/sandbox.py) and need root.

Tests marked ``sandbox`` create, break and remove sandbox hosts; select or skip them with
``-m sandbox`` / ``-m "not sandbox"``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SANDBOX_SCRIPT = REPO_ROOT / "tests" / "sandbox" / "sandbox.py"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sandbox: uses the multi-host sandbox (root; creates hosts, bridge, mounts)")


SandboxCLI = Callable[..., "subprocess.CompletedProcess[str]"]


def run_sandbox(*arguments: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run tests/sandbox/sandbox.py with ARGUMENTS; fail the test with its output when CHECK and it fails."""
    result = subprocess.run(
        [sys.executable, str(SANDBOX_SCRIPT), *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(f"sandbox.py {' '.join(arguments)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


@pytest.fixture(scope="session")
def sandbox_cli() -> SandboxCLI:
    """The sandbox command: ``sandbox_cli("up", "--hosts", "2")``, ``sandbox_cli("kill", "node2")``."""
    return run_sandbox


# Modules share the sandbox, so their order is part of the design: checks that must see untouched
# hosts first, then the first deploy, then modules that reuse the serving cluster, the ones that
# break it on purpose, and those that start over with other host counts. Unlisted modules run last.
MODULE_ORDER = (
    "test_bad_inputs",
    "test_deploy_native",
    "test_security",
    "test_status_restart",
    "test_dp_replicas",
    "test_nccl_check",
    "test_benchmark",
    "test_fault_drills",
    "test_scale",
    "test_model_weights",
    "test_ray_cluster",
    "test_batch",
    "test_llama_cpp",
    "test_sandbox",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def position(item: pytest.Item) -> int:
        module = item.module.__name__.rsplit(".", 1)[-1]
        return MODULE_ORDER.index(module) if module in MODULE_ORDER else len(MODULE_ORDER)

    items.sort(key=position)  # stable: tests keep their order within a module
