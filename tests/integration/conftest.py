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
