"""Integration tests run against the cluster-in-a-box (tests/sandbox/sandbox.py) and need root.

Tests marked ``sandbox`` create, break and remove sandbox hosts; select or skip them with
``-m sandbox`` / ``-m "not sandbox"``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SANDBOX_SCRIPT = REPO_ROOT / "tests" / "sandbox" / "sandbox.py"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sandbox: uses the multi-host sandbox (root; creates hosts, bridge, mounts)")
    # Every program the tests start (ansible-playbook, ssh, sandbox.py) inherits stdin: /dev/null, whatever
    # the run was started with (a terminal, a pipe held open, nothing), so none of them can wait on it or read it.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


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
# hosts first, then the first deploy, then the modules that reuse that serving cluster (each one calls
# helpers.ensure_native_cluster, which re-runs deploy only when something changed it), the ones that break
# it on purpose or serve another shape, the scale-out to three hosts and the modules that need three, and
# last the sandbox's own tests, which start over with `down`. Unlisted modules run last.
MODULE_ORDER = (
    "test_bad_inputs",
    "test_deploy_native",
    "test_security",
    "test_status_restart",
    "test_reboot_consent",
    "test_nccl_check",
    "test_benchmark",
    "test_fault_drills",
    "test_rollback",
    # Leaves the group on a second runtime; test_dp_replicas, which restarts it into another shape anyway,
    # converges back onto the first, which is kept.
    "test_runtime_upgrade",
    "test_dp_replicas",
    "test_scale",
    "test_model_weights",
    "test_ray_cluster",
    "test_batch",
    "test_llama_cpp",
    "test_sandbox",
)
# Tests that run elsewhere than with their module, each just before the named module. The teardown check
# removes what every serving module needs, so it runs after the last of them, on the cluster they leave
# serving, and before the modules that need no serving vLLM (Ray, batch, llama.cpp). The fixtures such a
# test uses are session-scoped, so nothing is set up twice.
MOVED_TESTS = {
    "test_deploy_native.py::test_teardown_leaves_no_unit_process_or_port": "test_ray_cluster",
}


def module_name(item: pytest.Item) -> str:
    return item.module.__name__.rsplit(".", 1)[-1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def position(item: pytest.Item) -> tuple[int, int]:
        moved_to = MOVED_TESTS.get(f"{item.path.name}::{item.originalname}")
        module = moved_to or module_name(item)
        index = MODULE_ORDER.index(module) if module in MODULE_ORDER else len(MODULE_ORDER)
        return index, 0 if moved_to else 1

    items.sort(key=position)  # stable: tests keep their order within a module


# Wall time per module (setup, calls and teardown of its tests, module fixtures included), printed at the
# end of the run so that `make test` shows where the integration phase spends its time.
MODULE_SECONDS: dict[str, float] = {}
RUN_STARTED = time.monotonic()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    started = time.monotonic()
    yield
    module = module_name(item)
    MODULE_SECONDS[module] = MODULE_SECONDS.get(module, 0.0) + time.monotonic() - started
    # A line as each module ends, written at once: when a run is cut off, its tail names the module that
    # was running and how long each one before it took, with the free disk and the load it ran under.
    if nextitem is None or module_name(nextitem) != module:
        elapsed = time.monotonic() - RUN_STARTED
        free_gib = shutil.disk_usage("/var/lib").free / 2**30
        load = os.getloadavg()[0]
        line = (
            f"[integration] {module} done in {MODULE_SECONDS[module]:.0f} s ({elapsed:.0f} s into the run;"
            f" {free_gib:.0f} GiB free, load {load:.1f})"
        )
        reporter = item.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(line)
            reporter.flush()


def pytest_terminal_summary(terminalreporter) -> None:
    if not MODULE_SECONDS:
        return
    terminalreporter.section("integration time per module")
    for module, seconds in MODULE_SECONDS.items():
        terminalreporter.write_line(f"{seconds:8.1f} s  {module}")
    terminalreporter.write_line(f"{sum(MODULE_SECONDS.values()):8.1f} s  total")
