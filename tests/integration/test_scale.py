# Copyright: Contributors to the llmserve.cluster project
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Scale by re-running deploy.yml: a spare node restarts nothing, decommissioning re-plans.

The sandbox plans TP 2 over one CPU "GPU" per host, so a third host is a spare (the plan keeps
node1+node2 and nothing that serves restarts) and decommissioning node2 moves rank 1 to node3.
Decommissioning below two hosts, or the head, is refused before any host changes.
"""

from __future__ import annotations

import json

import pytest

from .helpers import (
    REPO_ROOT,
    ansible_playbook,
    completion_answers,
    ensure_native_cluster,
    plan_table,
    recap,
    sandbox_hosts,
    ssh,
)

DEPLOY = REPO_ROOT / "playbooks" / "deploy.yml"

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def cluster(sandbox_cli):
    ensure_native_cluster(sandbox_cli, 2)
    return sandbox_cli


def started_at(hosts, key, name: str) -> str:
    """When vllm.service last entered `active` on NAME (empty when it does not run there)."""
    return ssh(hosts, key, name, "systemctl show -p ActiveEnterTimestampMonotonic --value vllm.service").stdout.strip()


def plan_nodes(hosts, key, name: str = "node1") -> list[str]:
    plan = json.loads(ssh(hosts, key, name, "cat /etc/llmserve/plan.json").stdout)
    return [node["name"] for node in plan["nodes"]]


def test_a_spare_node_gets_runtime_and_weights_and_restarts_nothing(cluster):
    hosts, key = sandbox_hosts()
    before = {name: started_at(hosts, key, name) for name in ("node1", "node2")}
    cluster("up", "--hosts", "3", timeout=900)
    hosts, key = sandbox_hosts()
    run = ansible_playbook(DEPLOY, timeout=2400)
    assert run.returncode == 0, run.stdout[-6000:]
    assert "PLAN  unchanged: nothing that serves restarts" in run.stdout, plan_table(run.stdout)
    assert {name: started_at(hosts, key, name) for name in ("node1", "node2")} == before
    assert ssh(hosts, key, "node3", "test -x /opt/llmserve/venv/bin/vllm && ls /srv/models/tiny-llama").returncode == 0
    assert ssh(hosts, key, "node3", "test -e /etc/systemd/system/vllm.service", check=False).returncode == 1
    assert plan_nodes(hosts, key) == ["node1", "node2"]


def test_decommissioning_the_head_is_refused_before_any_change(cluster):
    run = ansible_playbook(DEPLOY, "-e", "llmserve_decommission=node1", timeout=600)
    assert run.returncode != 0
    assert "llmserve_decommission" in run.stdout and "move ray_head to another host first" in run.stdout
    assert all(counts.get("changed", 0) == 0 for counts in recap(run.stdout).values())


def test_decommissioning_below_what_the_model_needs_is_refused_before_any_change(cluster):
    hosts, key = sandbox_hosts()
    before = started_at(hosts, key, "node2")
    run = ansible_playbook(DEPLOY, "-e", "llmserve_decommission=node2,node3", timeout=900)
    assert run.returncode != 0
    assert "does not fit" in run.stdout or "needs 2 GPUs" in run.stdout, run.stdout[-4000:]
    assert all(counts.get("changed", 0) == 0 for counts in recap(run.stdout).values())
    assert started_at(hosts, key, "node2") == before and completion_answers(hosts, key)


def test_decommissioning_a_serving_worker_moves_its_rank_and_shows_both_plans(cluster):
    hosts, key = sandbox_hosts()
    run = ansible_playbook(DEPLOY, "-e", "llmserve_decommission=node2", timeout=2400)
    assert run.returncode == 0, run.stdout[-6000:]
    assert "PLAN  changed: vLLM restarts" in run.stdout, plan_table(run.stdout)
    assert "node1, node2" in run.stdout and "node1, node3" in run.stdout
    assert plan_nodes(hosts, key) == ["node1", "node3"]
    assert ssh(hosts, key, "node2", "test -e /etc/systemd/system/vllm.service", check=False).returncode == 1
    assert ssh(hosts, key, "node2", "test -e /etc/llmserve/plan.json", check=False).returncode == 1
    # Weights and runtime stay on the decommissioned host.
    assert ssh(hosts, key, "node2", "ls /srv/models/tiny-llama/config.json").returncode == 0
    assert completion_answers(hosts, key)


def test_taking_the_host_back_re_plans_onto_it(cluster):
    hosts, key = sandbox_hosts()
    run = ansible_playbook(DEPLOY, timeout=2400)
    assert run.returncode == 0, run.stdout[-6000:]
    assert plan_nodes(hosts, key) == ["node1", "node2"]
    assert ssh(hosts, key, "node3", "test -e /etc/systemd/system/vllm.service", check=False).returncode == 1
    assert completion_answers(hosts, key)
    again = ansible_playbook(DEPLOY, timeout=1200)
    assert again.returncode == 0 and all(counts.get("changed", 0) == 0 for counts in recap(again.stdout).values())
