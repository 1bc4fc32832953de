# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fault drills on the serving native cluster: break something real, then one ordinary re-run repairs it.

Each drill checks that the failure shows within a bounded time, that a single `deploy.yml` run
brings serving back, and that nothing was lost: the weights on every host are the same files
(same inode and mtime, so nothing was copied again), and the API key and the plan are unchanged.
Drills 4 and 5 (an interrupted weight copy resumes; a corrupted shard is named and repaired) run
in test_model_weights.py, with the model_weights role on its own.
"""

from __future__ import annotations

import time

import pytest

from .helpers import REPO_ROOT, ansible_playbook, completion_answers, ensure_native_cluster, recap, sandbox_hosts, ssh

DEPLOY = REPO_ROOT / "playbooks" / "deploy.yml"
STATUS = REPO_ROOT / "playbooks" / "status.yml"
# Listing the weights with inode and mtime: a re-copy or a re-download changes both.
WEIGHTS_LISTING = "find /srv/models/tiny-llama -type f -printf '%p %i %T@ %s\\n' | sort"
KEPT = "cat /etc/llmserve/api-key /etc/llmserve/plan.json | sha256sum"
FAILURE_BOUND_S = 180

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def cluster(sandbox_cli):
    ensure_native_cluster(sandbox_cli, 2)
    return sandbox_cli


def snapshot(hosts, key) -> dict:
    """What must survive every drill, per host."""
    return {
        name: (ssh(hosts, key, name, WEIGHTS_LISTING).stdout, ssh(hosts, key, name, KEPT, check=False).stdout)
        for name in ("node1", "node2")
    }


def repaired_by_one_run(hosts, key, before: dict) -> None:
    run = ansible_playbook(DEPLOY, timeout=2400)
    assert run.returncode == 0, run.stdout[-6000:]
    assert completion_answers(hosts, key)
    assert snapshot(hosts, key) == before, "weights, API key or plan changed during the drill"


def test_drill_1_power_loss_of_a_worker(cluster):
    hosts, key = sandbox_hosts()
    before = snapshot(hosts, key)
    cluster("kill", "node2")
    started = time.monotonic()
    failed_fast = not completion_answers(hosts, key, timeout=20)
    assert failed_fast and time.monotonic() - started < FAILURE_BOUND_S
    # A deploy while the host is down names it and ends, rather than waiting.
    started = time.monotonic()
    run = ansible_playbook(DEPLOY, timeout=900)
    assert run.returncode != 0 and "node2" in run.stdout and "UNREACHABLE" in run.stdout, run.stdout[-3000:]
    assert time.monotonic() - started < FAILURE_BOUND_S + 120
    cluster("start", "node2")
    repaired_by_one_run(hosts, key, before)


def test_drill_2_a_stopped_worker_unit_is_reported_by_status_and_restored(cluster):
    hosts, key = sandbox_hosts()
    before = snapshot(hosts, key)
    ssh(hosts, key, "node2", "systemctl stop vllm.service")
    status = ansible_playbook(STATUS, timeout=600)
    assert status.returncode != 0, status.stdout[-4000:]
    problem_lines = [line for line in status.stdout.splitlines() if "node2" in line and "vllm.service" in line]
    assert problem_lines, status.stdout[-4000:]
    repaired_by_one_run(hosts, key, before)
    assert ansible_playbook(STATUS, timeout=600).returncode == 0


def test_drill_3_power_loss_of_the_head(cluster):
    hosts, key = sandbox_hosts()
    before = snapshot(hosts, key)
    cluster("kill", "node1")
    assert not completion_answers(hosts, key, timeout=30)
    cluster("start", "node1")
    repaired_by_one_run(hosts, key, before)


def test_drill_6_a_partitioned_host_is_named_not_waited_for(cluster):
    hosts, key = sandbox_hosts()
    before = snapshot(hosts, key)
    cluster("partition", "node2")
    try:
        started = time.monotonic()
        run = ansible_playbook(DEPLOY, timeout=900)
        elapsed = time.monotonic() - started
    finally:
        cluster("heal", "node2")
    assert run.returncode != 0
    unreachable = [host for host, counts in recap(run.stdout).items() if counts.get("unreachable")]
    assert unreachable == ["node2"], run.stdout[-4000:]
    assert elapsed < FAILURE_BOUND_S + 120, f"the partitioned run took {elapsed:.0f} s"
    assert all(counts.get("changed", 0) == 0 for counts in recap(run.stdout).values())
    repaired_by_one_run(hosts, key, before)
