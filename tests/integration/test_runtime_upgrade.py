# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Staged runtime upgrades on the serving native cluster (two hosts, TP 2).

A new lock file (the sandbox's closure plus the cmake wheel, which the offline wheelhouse holds) is a new runtime:
deploy.yml builds it in its own directory beside the one that serves while the endpoint keeps answering and the
running group keeps its start time, restarts the group onto it (the unit names the new directory, the running
process was exec'd from it), points llmserve_venv at it, keeps the old runtime (python_runtime_keep is 2), and a
re-run reports changed=0. Then an upgrade the wheelhouse cannot satisfy fails in restart.yml before anything stops:
the group's start time, the link, the unit and the runtimes directory are as they were, and a completion answers.

The cluster is left serving the new runtime; the next module that asks ensure_native_cluster for the standard
cluster converges back onto the first runtime, which is still in place, without a rebuild.
"""

from __future__ import annotations

import importlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .helpers import (
    REPO_ROOT,
    SANDBOX_SLOT,
    ansible_playbook,
    completion_answers,
    ensure_native_cluster,
    recap,
    sandbox_hosts,
    ssh,
)

DEPLOY = REPO_ROOT / "playbooks" / "deploy.yml"
RESTART = REPO_ROOT / "playbooks" / "restart.yml"
LOCK = REPO_ROOT / "tests" / "sandbox" / "requirements-cpu.txt"
WORK_DIR = REPO_ROOT / ".build" / f"runtime-upgrade-slot{SANDBOX_SLOT}"
LINK = "/opt/llmserve/venv"
VENVS = "/opt/llmserve/venvs"
UNIT = "/etc/systemd/system/vllm.service"
# The wheel the new runtime adds (tests/sandbox/make_tiny_gguf.py puts it in the wheelhouse for llama.cpp builds),
# and a release of it that no wheelhouse holds.
ADDED = "cmake==4.4.4"
MISSING = "cmake==0.0.1"
POLL_S = 3
# The longest the polling waits for both new runtimes (the build takes about 3 min here).
BUILD_LIMIT_S = 1200

pytestmark = pytest.mark.sandbox


def lock_with(line: str, name: str) -> str:
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    path = WORK_DIR / name
    path.write_text(LOCK.read_text() + f"{line}\n")
    return str(path)


@pytest.fixture(scope="module")
def cluster(sandbox_cli):
    # A sandbox script, importable from its own directory; a no-op when the wheel is in the wheelhouse already.
    sys.path.insert(0, str(REPO_ROOT / "tests" / "sandbox"))
    importlib.import_module("make_tiny_gguf").ensure_build_tools()
    ensure_native_cluster(sandbox_cli, 2)
    hosts, key = sandbox_hosts()
    return hosts, key


def node_state(hosts, key, name: str) -> dict:
    """The link's target, the runtimes with their stamps, the unit's ExecStart and hash, and vLLM's last start."""
    command = (
        f"readlink {LINK}; echo ---; "
        f'for d in {VENVS}/*/; do echo "$d $(cat $d.llmserve-installed 2>/dev/null)"; done; echo ---; '
        f"grep -o '^ExecStart=[^ ]*' {UNIT}; sha256sum {UNIT}; echo ---; "
        "systemctl show -p ActiveEnterTimestampMonotonic --value vllm.service; "
        "tr '\\0' ' ' < /proc/$(systemctl show -p MainPID --value vllm.service)/cmdline; echo; echo ---; "
        f"ls -A {LINK.rsplit('/', 1)[0]}"
    )
    link, runtimes, unit, process, listing = ssh(hosts, key, name, command).stdout.split("---\n")
    exec_start, unit_hash = unit.splitlines()
    started, cmdline = process.splitlines()[:2]
    return {
        "link": link.strip(),
        "runtimes": sorted(line for line in runtimes.splitlines() if line.strip()),
        "exec_start": exec_start.removeprefix("ExecStart="),
        "unit_hash": unit_hash,
        "started": int(started),
        "cmdline": cmdline,
        "listing": listing.split(),
    }


def test_a_new_runtime_is_built_beside_served_from_and_linked_and_a_rerun_changes_nothing(cluster):
    hosts, key = cluster
    before = {name: node_state(hosts, key, name) for name in ("node1", "node2")}
    old = before["node1"]["link"]
    assert old.startswith(VENVS + "/") and all(state["link"] == old for state in before.values()), before
    assert all(state["exec_start"] == f"{old}/bin/vllm" for state in before.values()), before
    upgrade = lock_with(ADDED, "requirements-upgrade.txt")

    started_at = time.monotonic()
    run = ansible_playbook(DEPLOY, "-e", f"python_runtime_requirements_file={upgrade}", background=True)
    # Drained beside the polling, or a full pipe would stop the deploy.
    output = ThreadPoolExecutor(1).submit(run.stdout.read)
    # Until the new runtime is stamped on both hosts the old group serves: same start, answering.
    built, samples = False, []
    while run.poll() is None and not built and time.monotonic() - started_at < BUILD_LIMIT_S:
        listing = {
            name: ssh(hosts, key, name, f"ls {VENVS}/*/.llmserve-installed", check=False).stdout
            for name in ("node1", "node2")
        }
        built = all(len(text.split()) == 2 for text in listing.values())
        started = {name: node_state(hosts, key, name)["started"] for name in ("node1", "node2")}
        samples.append((completion_answers(hosts, key, timeout=60), started))
        time.sleep(POLL_S)
    built_after = time.monotonic() - started_at
    assert run.wait(timeout=600) == 0, output.result()[-6000:]
    assert built and samples, "the deploy ended before the new runtime was seen built beside the old one"
    print(f"new runtime built beside the old one after {built_after:.0f} s, {len(samples)} samples")
    assert all(answered for answered, _started in samples), samples
    assert all(started == {name: before[name]["started"] for name in started} for _answered, started in samples), (
        "the group restarted before the new runtime was built"
    )

    after = {name: node_state(hosts, key, name) for name in ("node1", "node2")}
    new = after["node1"]["link"]
    assert new != old and new.startswith(VENVS + "/"), after
    for name, state in after.items():
        assert state["link"] == new, (name, state)
        assert state["exec_start"] == f"{new}/bin/vllm", (name, state)
        assert f"{new}/bin/vllm serve" in state["cmdline"], (name, state)
        assert state["started"] > before[name]["started"], (name, state)
        # python_runtime_keep is 2: the old runtime stays, stamped, for a rollback.
        assert [line.split()[0].rstrip("/") for line in state["runtimes"]] == sorted([old, new]), (name, state)
        assert all(len(line.split()) == 2 for line in state["runtimes"]), (name, state)
        imports = ssh(
            hosts, key, name, f"{new}/bin/python -c 'import cmake'; {old}/bin/python -c 'import cmake'", check=False
        )
        assert imports.returncode != 0 and "No module named 'cmake'" in imports.stderr, (name, imports.stderr)
        assert ssh(hosts, key, name, f"{new}/bin/python -c 'import cmake'", check=False).returncode == 0
    assert completion_answers(hosts, key)

    again = ansible_playbook(DEPLOY, "-e", f"python_runtime_requirements_file={upgrade}", timeout=1800)
    assert again.returncode == 0, again.stdout[-6000:]
    assert all(counts.get("changed") == 0 for counts in recap(again.stdout).values()), recap(again.stdout)
    assert {name: node_state(hosts, key, name) for name in ("node1", "node2")} == after


def test_an_upgrade_that_cannot_be_built_fails_before_anything_stops(cluster):
    hosts, key = cluster
    before = {name: node_state(hosts, key, name) for name in ("node1", "node2")}
    broken = lock_with(MISSING, "requirements-missing.txt")
    run = ansible_playbook(
        RESTART, "-e", "llmserve_restart_upgrade=true", "-e", f"python_runtime_requirements_file={broken}", timeout=900
    )
    assert run.returncode != 0, run.stdout[-4000:]
    assert "Nothing that serves was stopped or changed" in run.stdout and "cmake==0.0.1" in run.stdout, run.stdout[
        -4000:
    ]
    assert "TASK [Stop vLLM on every rank" not in run.stdout, run.stdout[-4000:]
    # Same start, same link, same unit, no runtime directory left behind by the failed build.
    assert {name: node_state(hosts, key, name) for name in ("node1", "node2")} == before
    assert completion_answers(hosts, key)
